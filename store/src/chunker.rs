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

/// Chunking parameters, recorded in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The default for new repositories, chosen by measurement on database
    /// dumps with scattered daily changes (see the README).
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        algorithm: ChunkerAlgorithm::FastCdc2020,
        min_len: 2 * 1024,
        avg_len: 8 * 1024,
        max_len: 64 * 1024,
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
        assert_eq!(cuts[0], 65536);
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
