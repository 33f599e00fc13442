//! Cuts a stream into identified chunks, predicting cuts from the item's
//! previous version so that unchanged runs skip content-defined chunking.
//!
//! A FastCDC cut depends only on the bytes from the chunk's start to the cut.
//! So if the bytes at the current position hash to the parent's next chunk
//! id, CDC would cut exactly there, and hashing alone (in parallel batches)
//! replaces the rolling-hash scan. The parent's last chunk was cut by its end
//! of stream, so it is predicted only at this stream's end. After a mismatch
//! the cutter runs CDC until a chunk it cuts is one of the parent's, then
//! predicts again from the chunk after it. The result is always exactly the
//! cuts of plain CDC (tested below); prediction only makes it faster.

use std::sync::Arc;

use rayon::prelude::*;

use crate::format::chunker::Chunker;
use crate::format::wire::len_u32;
use crate::id::{BlobId, IdMap};

/// The most chunks hashed per prediction or CDC batch.
const BATCH: usize = 256;
/// Prediction batches start this small after a change (a mismatch wastes
/// the rest of a batch) and double while predictions hold.
const FIRST_BATCH: usize = 8;
/// Runs at least this long are hashed on the rayon pool.
const PARALLEL_RUN: usize = 32;
/// After this many chunks scanned out of step, scan in parallel batches.
const LONG_LOSS: u32 = 64;

/// The previous version's chunk list; cloning it shares it (the cutter
/// predicts from it while the writer deduplicates against it).
#[derive(Debug, Default, Clone)]
pub struct ParentChunks {
    chunks: Arc<[(BlobId, u32)]>,
    /// First position of each id.
    positions: Arc<IdMap<BlobId, u32>>,
}

impl ParentChunks {
    /// From the parent's chunks, in order.
    pub fn new(chunks: Vec<(BlobId, u32)>) -> Self {
        let mut positions = IdMap::default();
        positions.reserve(chunks.len());
        for (i, (id, _)) in chunks.iter().enumerate() {
            positions
                .entry(*id)
                .or_insert(u32::try_from(i).unwrap_or(u32::MAX));
        }
        ParentChunks {
            chunks: chunks.into(),
            positions: Arc::new(positions),
        }
    }

    /// Whether `id` is one of the chunks.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.positions.contains_key(id)
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Counters of how chunks were found.
#[derive(Debug, Default, Clone, Copy)]
pub struct CutStats {
    /// Chunks confirmed from the parent by hash alone.
    pub predicted: u64,
    /// Chunks found by CDC.
    pub scanned: u64,
}

/// Cuts and hashes a stream fed in buffers.
#[derive(Debug)]
pub struct Cutter {
    chunker: Chunker,
    parent: Option<ParentChunks>,
    /// The parent chunk expected next, while in step with the parent.
    next: Option<usize>,
    /// Chunks to predict in the next batch.
    batch: usize,
    /// Chunks scanned since the cutter was last in step.
    lost_run: u32,
    /// Counters.
    pub stats: CutStats,
}

impl Cutter {
    /// A cutter; with a parent, predictions start at its first chunk.
    pub fn new(chunker: Chunker, parent: Option<ParentChunks>) -> Cutter {
        let parent = parent.filter(|p| !p.is_empty());
        let next = parent.as_ref().map(|_| 0);
        Cutter {
            chunker,
            parent,
            next,
            batch: FIRST_BATCH,
            lost_run: 0,
            stats: CutStats::default(),
        }
    }

    /// Cuts as much of `buf` as is certain, appending each chunk's length and
    /// id; returns the bytes consumed. What is left (less than a chunk unless
    /// `eof`) belongs to the next call.
    pub fn cut(
        &mut self,
        buf: &[u8],
        eof: bool,
        lens: &mut Vec<u32>,
        ids: &mut Vec<BlobId>,
    ) -> usize {
        let mut pos = 0;
        loop {
            if self.next.is_some() {
                match self.predict(buf, pos, eof, lens, ids) {
                    Predicted::Advanced(p) => {
                        pos = p;
                        continue;
                    }
                    Predicted::NeedMore(p) => return p,
                    Predicted::Lost(p) => pos = p,
                }
            }
            match self.scan(buf, pos, eof, lens, ids) {
                Some(p) if p > pos => pos = p,
                _ => return pos,
            }
        }
    }

    /// Confirms a run of the parent's chunks by hash.
    ///
    /// FastCDC's decision to cut at length L reads byte L too (the byte
    /// after the chunk), so a matching chunk is proven only when that byte
    /// is the parent's as well: when the next chunk matches too (its first
    /// byte is that byte), when the chunk was cut at the maximum length (no
    /// decision read past it), or when it ends exactly at the end of stream.
    /// Otherwise (the last match before a change, or of a batch) the CDC
    /// decision is simply run on that one chunk: no byte is hashed twice.
    fn predict(
        &mut self,
        buf: &[u8],
        pos: usize,
        eof: bool,
        lens: &mut Vec<u32>,
        ids: &mut Vec<BlobId>,
    ) -> Predicted {
        let (Some(parent), Some(start)) = (self.parent.as_ref(), self.next) else {
            return Predicted::Lost(pos);
        };
        let last = parent.chunks.len() - 1;
        let mut run: Vec<(usize, usize)> = Vec::new();
        let mut p = pos;
        let mut k = start;
        let mut stop = Stop::Parent;
        while k <= last {
            if run.len() == self.batch {
                stop = Stop::Batch;
                break;
            }
            let len = parent.chunks[k].1 as usize;
            if p + len > buf.len() {
                stop = if eof { Stop::Parent } else { Stop::Data };
                break;
            }
            if k == last && !(eof && p + len == buf.len()) {
                // Cut by the parent's end of stream: valid only at ours.
                stop = if !eof && p + len == buf.len() {
                    Stop::Data
                } else {
                    Stop::Parent
                };
                break;
            }
            run.push((p, len));
            p += len;
            k += 1;
        }
        // Hash until the first mismatch (short-circuiting: after a change,
        // the rest of the run is not hashed for nothing).
        let differs = |(i, &(at, len)): (usize, &(usize, usize))| {
            BlobId::of(&buf[at..at + len]) != parent.chunks[start + i].0
        };
        // Short runs (right after a change) are hashed here: handing them
        // to the pool would cost more than the hashing.
        let matching = if run.len() < PARALLEL_RUN {
            run.iter().enumerate().position(differs)
        } else {
            run.par_iter()
                .enumerate()
                .with_min_len(16)
                .position_first(differs)
        }
        .unwrap_or(run.len());
        let max_len = self.chunker.max_len();
        let mut p = pos;
        for (i, &(at, len)) in run.iter().enumerate() {
            if i == matching {
                self.next = None;
                return Predicted::Lost(p);
            }
            let proven = len == max_len || (eof && at + len == buf.len()) || i + 1 < matching;
            if !proven {
                match self.chunker.next_len(&buf[at..], eof) {
                    Some(cut) if cut == len => {}
                    Some(_) => {
                        // The byte after it differs and moves the cut.
                        self.next = None;
                        return Predicted::Lost(p);
                    }
                    None => {
                        self.next = Some(start + i);
                        return Predicted::NeedMore(p);
                    }
                }
            }
            lens.push(len_u32(len));
            ids.push(parent.chunks[start + i].0);
            p = at + len;
            self.stats.predicted += 1;
        }
        self.next = Some(start + run.len());
        match stop {
            Stop::Batch => {
                self.batch = (self.batch * 2).min(BATCH);
                Predicted::Advanced(p)
            }
            Stop::Data => Predicted::NeedMore(p),
            Stop::Parent => {
                // The parent ran out, or its next chunk cannot be here: scan on.
                self.next = None;
                Predicted::Lost(p)
            }
        }
    }

    /// Runs CDC from `pos` and hashes what it cuts. Out of step with a
    /// parent, it goes one chunk at a time and stops at the first chunk that
    /// is one of the parent's (a change is usually a chunk or two long);
    /// without a parent, or after a long unmatched stretch, it cuts a batch
    /// and hashes it in parallel. Returns the new position, or `None` when
    /// more data is needed to cut at all.
    fn scan(
        &mut self,
        buf: &[u8],
        pos: usize,
        eof: bool,
        lens: &mut Vec<u32>,
        ids: &mut Vec<BlobId>,
    ) -> Option<usize> {
        let one_by_one = self.parent.is_some() && self.lost_run < LONG_LOSS;
        let want = if one_by_one { 1 } else { BATCH };
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let mut p = pos;
        while cuts.len() < want {
            let Some(len) = self.chunker.next_len(&buf[p..], eof) else {
                break;
            };
            cuts.push((p, len));
            p += len;
        }
        if cuts.is_empty() {
            return None;
        }
        let hashes: Vec<BlobId> = if one_by_one {
            cuts.iter()
                .map(|&(at, len)| BlobId::of(&buf[at..at + len]))
                .collect()
        } else {
            cuts.par_iter()
                .with_min_len(8)
                .map(|&(at, len)| BlobId::of(&buf[at..at + len]))
                .collect()
        };
        let mut end = pos;
        for (&(at, len), id) in cuts.iter().zip(hashes) {
            lens.push(len_u32(len));
            ids.push(id);
            end = at + len;
            self.stats.scanned += 1;
            self.lost_run += 1;
            if let Some(parent) = &self.parent
                && let Some(&j) = parent.positions.get(&id)
            {
                // Back in step: predict from the parent's next chunk (the
                // rest of a parallel batch is cut again, by prediction).
                self.next = Some(j as usize + 1);
                self.batch = FIRST_BATCH;
                self.lost_run = 0;
                return Some(end);
            }
        }
        Some(end)
    }
}

/// Why a run of predictions stopped.
#[derive(Clone, Copy)]
enum Stop {
    /// A full batch.
    Batch,
    /// The buffer ended before the next chunk could.
    Data,
    /// The parent has no chunk that can come next here.
    Parent,
}

enum Predicted {
    /// A full batch was confirmed; predict on from here.
    Advanced(usize),
    /// In step, but the next chunk needs more data.
    NeedMore(usize),
    /// Out of step (or the parent ran out): scan from here.
    Lost(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunker::ChunkerParams;
    use proptest::prelude::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    fn plain(chunker: &Chunker, input: &[u8]) -> Vec<(BlobId, u32)> {
        let mut lens = Vec::new();
        chunker.split(input, true, &mut lens);
        let mut at = 0usize;
        lens.iter()
            .map(|&l| {
                let id = BlobId::of(&input[at..at + l as usize]);
                at += l as usize;
                (id, l)
            })
            .collect()
    }

    /// Feeds `input` in `step`-byte pieces, as the reader does.
    fn streamed(
        chunker: Chunker,
        parent: Option<ParentChunks>,
        input: &[u8],
        step: usize,
    ) -> (Vec<(BlobId, u32)>, CutStats) {
        let mut cutter = Cutter::new(chunker, parent);
        let (mut buf, mut lens, mut ids, mut fed) = (Vec::new(), Vec::new(), Vec::new(), 0);
        loop {
            let take = step.min(input.len() - fed);
            buf.extend_from_slice(&input[fed..fed + take]);
            fed += take;
            let eof = fed == input.len();
            let used = cutter.cut(&buf, eof, &mut lens, &mut ids);
            buf.drain(..used);
            if eof {
                assert!(buf.is_empty());
                break;
            }
        }
        (ids.into_iter().zip(lens).collect(), cutter.stats)
    }

    #[test]
    fn an_unchanged_stream_is_all_predicted() {
        let chunker = Chunker::new(ChunkerParams::DEFAULT).unwrap();
        let input = data(3 << 20, 1);
        let expected = plain(&chunker, &input);
        let (got, stats) = streamed(
            chunker,
            Some(ParentChunks::new(expected.clone())),
            &input,
            1 << 20,
        );
        assert_eq!(got, expected);
        assert_eq!(stats.scanned, 0, "{stats:?}");
    }

    #[test]
    fn scattered_edits_resynchronise_quickly() {
        let chunker = Chunker::new(ChunkerParams::DEFAULT).unwrap();
        let old = data(4 << 20, 2);
        let mut new = old.clone();
        for at in (1000..new.len()).step_by(200_000) {
            new[at] ^= 0xff;
        }
        new.splice(2_000_000..2_000_000, [7u8; 333]);
        let expected = plain(&chunker, &new);
        let (got, stats) = streamed(
            chunker,
            Some(ParentChunks::new(plain(&chunker, &old))),
            &new,
            1 << 20,
        );
        assert_eq!(got, expected);
        assert!(stats.scanned < expected.len() as u64 / 10, "{stats:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn prediction_always_equals_plain_cdc(
            seed in any::<u64>(),
            len in 0usize..300_000,
            edits in proptest::collection::vec((any::<u32>(), 0u8..4, any::<u8>()), 0..12),
            step in 1000usize..120_000,
        ) {
            let chunker = Chunker::new(ChunkerParams::DEFAULT).unwrap();
            let old = data(len, seed);
            let mut new = old.clone();
            for (at, op, byte) in edits {
                let at = if new.is_empty() { 0 } else { at as usize % new.len() };
                match op {
                    0 if !new.is_empty() => new[at] = byte,
                    1 => new.insert(at, byte),
                    2 if !new.is_empty() => { new.remove(at); }
                    _ => new.truncate(at),
                }
            }
            let expected = plain(&chunker, &new);
            let (got, _) = streamed(chunker, Some(ParentChunks::new(plain(&chunker, &old))), &new, step);
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn prediction_equals_plain_cdc_on_repetitive_data(
            blocks in proptest::collection::vec((0u8..3, 1usize..40_000), 1..40),
            edit_at in any::<u32>(),
            step in 1000usize..120_000,
        ) {
            // Runs of zeros and a few repeated patterns: ids recur everywhere.
            let chunker = Chunker::new(ChunkerParams::DEFAULT).unwrap();
            let pattern = data(50_000, 9);
            let old: Vec<u8> = blocks.iter().flat_map(|&(kind, len)| match kind {
                0 => vec![0u8; len],
                1 => pattern[..len].to_vec(),
                _ => pattern[len / 2..len].to_vec(),
            }).collect();
            let mut new = old.clone();
            if !new.is_empty() {
                let at = edit_at as usize % new.len();
                new[at] = new[at].wrapping_add(1);
            }
            let expected = plain(&chunker, &new);
            let (got, _) = streamed(chunker, Some(ParentChunks::new(plain(&chunker, &old))), &new, step);
            prop_assert_eq!(got, expected);
        }
    }
}
