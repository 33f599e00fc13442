//! Content-defined chunking: FastCDC (2020) over a byte stream.
//!
//! Cut points depend only on the bytes from the start of the current chunk,
//! so the stream can be fed in buffers of any size: [`Chunker::split`] takes
//! what is certain in a buffer and leaves the tail for the next one, and the
//! cuts equal those of the whole input at once. The parameters are fixed per
//! repository (its config) because dedup across snapshots needs the same cuts.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use fastcdc::v2020 as cdc;

/// How each item's chunk size is chosen; recorded in the repository config.
///
/// Small chunks pay off only where a chunk's stored (compressed) size is well
/// above the ~110 bytes of index, trailer and tree entry every chunk costs:
/// scattered edits to a JSON dump want 2 KiB chunks, a pg_dump that
/// compresses 60× wants 32 KiB, a tarball of binaries 64 KiB. So each item
/// gets an average length of about `target_stored_len` × its compression
/// ratio, measured on its first bytes ([`ChunkingPolicy::choose`]), as a
/// power of two within `min_avg_len..=max_avg_len`; content with NUL bytes
/// (binary) gets `max_avg_len`. A backup reuses the choice recorded for the
/// same item name in the newest snapshot, so an item's chunks never change
/// size from one day to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingPolicy {
    /// Always `"fastcdc-2020"`.
    pub algorithm: ChunkerAlgorithm,
    /// FastCDC normalisation level (0-3).
    pub normalization: u8,
    /// The smallest average chunk length an item may get.
    pub min_avg_len: u32,
    /// The largest average chunk length an item may get.
    pub max_avg_len: u32,
    /// Aim for chunks that compress to about this many bytes.
    pub target_stored_len: u32,
}

/// Bytes at the start of an item that decide its chunk size.
pub const SAMPLE_LEN: usize = 4 << 20;

impl ChunkingPolicy {
    /// The default for new repositories (see the README for the measurements).
    pub const DEFAULT: ChunkingPolicy = ChunkingPolicy {
        algorithm: ChunkerAlgorithm::FastCdc2020,
        normalization: 1,
        min_avg_len: 2 * 1024,
        max_avg_len: 64 * 1024,
        target_stored_len: 512,
    };

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = self.min_avg_len.is_power_of_two()
            && self.max_avg_len.is_power_of_two()
            && self.min_avg_len <= self.max_avg_len
            && self.target_stored_len > 0;
        if !ok {
            return Err(Error::invalid(format!(
                "chunking policy {self:?} out of range"
            )));
        }
        self.params(self.min_avg_len).validate()?;
        self.params(self.max_avg_len).validate()
    }

    /// The parameters for an average length: minimum a quarter, maximum eight times.
    pub fn params(&self, avg_len: u32) -> ChunkerParams {
        ChunkerParams {
            algorithm: self.algorithm,
            min_len: avg_len / 4,
            avg_len,
            max_len: avg_len.saturating_mul(8),
            normalization: self.normalization,
        }
    }

    /// Chooses an item's parameters from its first bytes (up to
    /// [`SAMPLE_LEN`]; all of it when shorter): binary content (any NUL
    /// byte) gets the largest chunks; text gets `target_stored_len` times its
    /// zstd (level 1) compression ratio, rounded to a power of two and clamped.
    pub fn choose(&self, sample: &[u8]) -> ChunkerParams {
        let sample = &sample[..sample.len().min(SAMPLE_LEN)];
        if sample.is_empty() || sample.contains(&0) {
            return self.params(self.max_avg_len);
        }
        let compressed = zstd::bulk::compress(sample, 1).map_or(sample.len(), |c| c.len().max(1));
        let ideal = f64::from(self.target_stored_len) * sample.len() as f64 / compressed as f64;
        // Nearest power of two, in log scale.
        #[allow(clippy::cast_possible_truncation)] // clamped to 0..=31 first
        let exponent = ideal.max(1.0).log2().round().clamp(0.0, 31.0) as u32;
        let avg = (1u32 << exponent).clamp(self.min_avg_len, self.max_avg_len);
        self.params(avg)
    }
}

/// One item's chunking parameters (chosen by the [`ChunkingPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    /// Always `"fastcdc-2020"`.
    pub algorithm: ChunkerAlgorithm,
    /// No chunk is shorter, except the last of a stream.
    pub min_len: u32,
    /// The expected chunk length.
    pub avg_len: u32,
    /// No chunk is longer.
    pub max_len: u32,
    /// FastCDC normalisation level (0-3): higher keeps lengths nearer `avg_len`.
    pub normalization: u8,
}

/// The chunking algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkerAlgorithm {
    /// FastCDC as in Xia et al. 2020, with the gear table of the `fastcdc`
    /// crate's `v2020` module (seed 0).
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
}

impl ChunkerParams {
    /// The smallest chunks of the default policy: 512 B / 2 KiB / 16 KiB.
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        algorithm: ChunkerAlgorithm::FastCdc2020,
        min_len: 512,
        avg_len: 2 * 1024,
        max_len: 16 * 1024,
        normalization: 1,
    };

    /// Checks the bounds the algorithm needs.
    pub fn validate(&self) -> Result<()> {
        let ok = self.min_len as usize >= cdc::MINIMUM_MIN
            && self.avg_len as usize >= cdc::AVERAGE_MIN
            && self.avg_len as usize <= cdc::AVERAGE_MAX
            && self.max_len as usize <= cdc::MAXIMUM_MAX
            && self.max_len as usize >= cdc::MAXIMUM_MIN
            && self.min_len < self.avg_len
            && self.avg_len < self.max_len
            && self.min_len % 2 == 0
            && self.avg_len % 2 == 0
            && self.max_len % 2 == 0
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "chunker parameters {self:?} are out of range: need even lengths with \
                 {} <= min < avg < max <= {}, avg in {}..={}, normalization 0..=3",
                cdc::MINIMUM_MIN,
                cdc::MAXIMUM_MAX,
                cdc::AVERAGE_MIN,
                cdc::AVERAGE_MAX
            )))
        }
    }
}

/// A configured FastCDC chunker. Cheap to copy; holds no stream state.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    min_len: usize,
    avg_len: usize,
    max_len: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker for validated parameters.
    pub fn new(params: ChunkerParams) -> Result<Self> {
        params.validate()?;
        let level = match params.normalization {
            0 => cdc::Normalization::Level0,
            1 => cdc::Normalization::Level1,
            2 => cdc::Normalization::Level2,
            _ => cdc::Normalization::Level3,
        };
        let (mask_s, mask_l) = cdc::select_masks(params.avg_len as usize, level);
        Ok(Chunker {
            min_len: params.min_len as usize,
            avg_len: params.avg_len as usize,
            max_len: params.max_len as usize,
            mask_s,
            mask_l,
        })
    }

    /// The longest chunk this chunker produces.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The length of the chunk at the start of `data`, or `None` when the
    /// cut cannot be known yet (fewer than `max_len` bytes and more to come).
    /// `eof` says that `data` is all that remains of the stream.
    pub fn next_len(&self, data: &[u8], eof: bool) -> Option<usize> {
        if data.is_empty() || (data.len() < self.max_len && !eof) {
            return None;
        }
        let window = &data[..data.len().min(self.max_len)];
        let (_, len) = cdc::cut(
            window,
            self.min_len,
            self.avg_len,
            self.max_len,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        Some(len)
    }

    /// Splits as much of `buf` as is certain into chunks, appending their
    /// lengths to `lens`, and returns how many bytes they cover. The rest of
    /// `buf` (less than `max_len` bytes unless `eof`) belongs to the next call.
    pub fn split(&self, buf: &[u8], eof: bool, lens: &mut Vec<u32>) -> usize {
        let mut pos = 0;
        while let Some(len) = self.next_len(&buf[pos..], eof) {
            // A chunk is at most max_len <= 16 MiB: it fits in u32.
            lens.push(u32::try_from(len).unwrap_or(u32::MAX));
            pos += len;
        }
        pos
    }

    /// Cut offsets (chunk ends) of a whole input: for tests and test vectors.
    pub fn cut_points(&self, data: &[u8]) -> Vec<u64> {
        let mut lens = Vec::new();
        self.split(data, true, &mut lens);
        lens.iter()
            .scan(0u64, |end, &len| {
                *end += u64::from(len);
                Some(*end)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    #[test]
    fn matches_the_reference_whole_input_chunker() {
        let p = ChunkerParams::DEFAULT;
        let data = pseudo_random(1 << 20, 7);
        let ours = Chunker::new(p).unwrap().cut_points(&data);
        let reference: Vec<u64> = cdc::FastCDC::new(
            &data,
            p.min_len as usize,
            p.avg_len as usize,
            p.max_len as usize,
        )
        .map(|c| (c.offset + c.length) as u64)
        .collect();
        assert_eq!(ours, reference);
    }

    #[test]
    fn empty_input_has_no_chunks_and_zeros_cut_at_max() {
        let c = Chunker::new(ChunkerParams::DEFAULT).unwrap();
        assert!(c.cut_points(&[]).is_empty());
        let zeros = vec![0u8; 200_000];
        let cuts = c.cut_points(&zeros);
        assert_eq!(cuts[0], 16384);
        assert_eq!(*cuts.last().unwrap(), 200_000);
    }

    #[test]
    fn rejects_bad_parameters() {
        let mut p = ChunkerParams::DEFAULT;
        p.min_len = 9000;
        assert!(Chunker::new(p).is_err());
        p = ChunkerParams::DEFAULT;
        p.max_len = 32 << 20;
        assert!(Chunker::new(p).is_err());
    }

    #[test]
    fn the_policy_sizes_chunks_by_compressibility() {
        let policy = ChunkingPolicy::DEFAULT;
        // Binary (a tar header has NULs): the largest chunks.
        let mut tar = vec![b'a'; 100_000];
        tar[10] = 0;
        assert_eq!(policy.choose(&tar).avg_len, 65536);
        // Random text barely compresses: the smallest.
        let text: Vec<u8> = pseudo_random(1 << 20, 3)
            .iter()
            .map(|b| b'a' + b % 26)
            .collect();
        assert_eq!(policy.choose(&text).avg_len, 2048);
        // Very repetitive text compresses hugely: large chunks.
        let rows: Vec<u8> = (0..20_000)
            .flat_map(|i| {
                format!("{i}\t1\t0\t                                                    \n")
                    .into_bytes()
            })
            .collect();
        assert!(policy.choose(&rows).avg_len >= 16384);
        assert_eq!(policy.choose(&[]).avg_len, 65536);
        policy.validate().unwrap();
        assert_eq!(policy.params(2048), ChunkerParams::DEFAULT);
    }

    proptest! {
        #[test]
        fn any_buffering_gives_the_same_cuts(
            seed in any::<u64>(), len in 0usize..400_000, step in 1usize..100_000
        ) {
            let c = Chunker::new(ChunkerParams::DEFAULT).unwrap();
            let data = pseudo_random(len, seed | 1);
            let whole = c.cut_points(&data);
            // Feed `step` bytes at a time, as a reader would.
            let (mut buf, mut lens, mut fed) = (Vec::new(), Vec::new(), 0);
            loop {
                let take = step.min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + take]);
                fed += take;
                let eof = fed == data.len();
                let used = c.split(&buf, eof, &mut lens);
                buf.drain(..used);
                if eof { break; }
            }
            prop_assert!(buf.is_empty());
            let mut end = 0u64;
            let streamed: Vec<u64> = lens.iter().map(|&l| { end += u64::from(l); end }).collect();
            prop_assert_eq!(streamed, whole);
        }
    }
}
