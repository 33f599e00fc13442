//! Frames: consecutive blobs compressed together.
//!
//! Small chunks compress badly one by one (zstd needs context), so new blobs
//! are gathered into frames of about `frame_target_len` raw bytes and each
//! frame is compressed as one zstd frame. Dedup stays per blob: the index
//! locates a blob as (pack, frame, offset in the raw frame, length). A frame
//! that does not shrink is stored raw.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::wire::len_u32;
use crate::id::BlobId;

/// How a frame's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// One zstd frame (RFC 8878) without dictionary.
    Zstd = 1,
}

impl Codec {
    /// The codec of an on-disk byte.
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// Compression settings, recorded in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionParams {
    /// Always `"zstd"`.
    pub algorithm: CompressionAlgorithm,
    /// zstd level (1-19; negative levels trade ratio for speed).
    pub level: i32,
    /// New blobs are grouped into frames of about this many raw bytes.
    pub frame_target_len: u32,
}

/// The compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompressionAlgorithm {
    /// zstd.
    #[serde(rename = "zstd")]
    Zstd,
}

impl CompressionParams {
    /// The default for new repositories (see the README for the measurements).
    pub const DEFAULT: CompressionParams = CompressionParams {
        algorithm: CompressionAlgorithm::Zstd,
        level: 3,
        frame_target_len: 512 * 1024,
    };

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(-7..=19).contains(&self.level)
            || self.frame_target_len == 0
            || self.frame_target_len > MAX_FRAME_RAW_LEN / 2
        {
            return Err(Error::invalid(format!(
                "compression parameters {self:?} out of range: level -7..=19, frame target 1..={}",
                MAX_FRAME_RAW_LEN / 2
            )));
        }
        Ok(())
    }
}

/// The largest raw frame a reader accepts (and so the largest blob).
pub const MAX_FRAME_RAW_LEN: u32 = 32 << 20;

/// A blob's place inside its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameBlob {
    /// The blob.
    pub id: BlobId,
    /// Offset in the raw (decompressed) frame.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// Blobs gathered for one frame, not yet compressed.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    raw: Vec<u8>,
    blobs: Vec<FrameBlob>,
}

impl FrameBuilder {
    /// Appends a blob.
    pub fn push(&mut self, id: BlobId, data: &[u8]) {
        self.blobs.push(FrameBlob {
            id,
            offset: len_u32(self.raw.len()),
            len: len_u32(data.len()),
        });
        self.raw.extend_from_slice(data);
    }

    /// Raw bytes gathered so far.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Takes the gathered blobs, leaving the builder empty.
    pub fn take(&mut self) -> FrameBuilder {
        std::mem::take(self)
    }

    /// Compresses into a frame; stores raw when compression does not help.
    pub fn compress(self, level: i32) -> Result<Frame> {
        let raw_len = len_u32(self.raw.len());
        let packed = ZSTD_COMPRESSOR.with(|c| -> Result<Vec<u8>> {
            let mut c = c.borrow_mut();
            if c.0 != level || c.1.is_none() {
                let z = zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::invalid(format!("zstd level {level}: {e}")))?;
                *c = (level, Some(z));
            }
            let z =
                c.1.as_mut()
                    .ok_or_else(|| Error::invalid("zstd compressor"))?;
            z.compress(&self.raw)
                .map_err(|e| Error::invalid(format!("zstd compression failed: {e}")))
        })?;
        let (codec, payload) = if packed.len() < self.raw.len() {
            (Codec::Zstd, packed)
        } else {
            (Codec::Raw, self.raw)
        };
        Ok(Frame {
            codec,
            raw_len,
            payload,
            blobs: self.blobs,
        })
    }
}

thread_local! {
    static ZSTD_COMPRESSOR: std::cell::RefCell<(i32, Option<zstd::bulk::Compressor<'static>>)> =
        const { std::cell::RefCell::new((0, None)) };
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A compressed frame ready to be appended to a pack.
#[derive(Debug)]
pub struct Frame {
    /// How `payload` is stored.
    pub codec: Codec,
    /// Length once decoded.
    pub raw_len: u32,
    /// The stored bytes.
    pub payload: Vec<u8>,
    /// The blobs, in order, covering the raw frame exactly.
    pub blobs: Vec<FrameBlob>,
}

/// Decodes a stored frame into exactly `raw_len` bytes.
pub fn decode_frame(
    codec: Codec,
    stored: &[u8],
    raw_len: u32,
) -> std::result::Result<Vec<u8>, String> {
    if raw_len > MAX_FRAME_RAW_LEN {
        return Err(format!("frame claims {raw_len} raw bytes, over the limit"));
    }
    match codec {
        Codec::Raw => {
            if stored.len() != raw_len as usize {
                return Err(format!(
                    "raw frame is {} bytes, expected {raw_len}",
                    stored.len()
                ));
            }
            Ok(stored.to_vec())
        }
        Codec::Zstd => ZSTD_DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            let d = d.as_mut().ok_or("zstd decompressor")?;
            let mut out = Vec::with_capacity(raw_len as usize);
            d.decompress_to_buffer(stored, &mut out)
                .map_err(|e| format!("zstd: {e}"))?;
            if out.len() != raw_len as usize {
                return Err(format!(
                    "frame decompressed to {} bytes, expected {raw_len}",
                    out.len()
                ));
            }
            Ok(out)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_frames_shrink_and_round_trip() {
        let mut b = FrameBuilder::default();
        let a = b"{\"id\":\"a\",\"value\":1}\n".repeat(100);
        let c = b"{\"id\":\"c\",\"value\":2}\n".repeat(50);
        b.push(BlobId::of(&a), &a);
        b.push(BlobId::of(&c), &c);
        let f = b.compress(3).unwrap();
        assert_eq!(f.codec, Codec::Zstd);
        assert!(f.payload.len() < a.len() / 4);
        let raw = decode_frame(f.codec, &f.payload, f.raw_len).unwrap();
        let blob = &f.blobs[1];
        assert_eq!(&raw[blob.offset as usize..][..blob.len as usize], &c[..]);
    }

    #[test]
    fn incompressible_frames_are_stored_raw() {
        let mut data = vec![0u8; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut data);
        let mut b = FrameBuilder::default();
        b.push(BlobId::of(&data), &data);
        let f = b.compress(3).unwrap();
        assert_eq!(f.codec, Codec::Raw);
        assert_eq!(decode_frame(f.codec, &f.payload, f.raw_len).unwrap(), data);
    }

    #[test]
    fn lying_lengths_are_errors_not_panics() {
        let mut b = FrameBuilder::default();
        b.push(BlobId::of(b"x"), &[7u8; 1000]);
        let f = b.compress(3).unwrap();
        assert!(decode_frame(f.codec, &f.payload, 999).is_err());
        assert!(decode_frame(f.codec, &f.payload, 1001).is_err());
        assert!(decode_frame(f.codec, &f.payload[..f.payload.len() - 1], 1000).is_err());
        assert!(decode_frame(Codec::Raw, &[1, 2, 3], 4).is_err());
        assert!(decode_frame(Codec::Zstd, &[1, 2, 3], MAX_FRAME_RAW_LEN + 1).is_err());
    }
}
