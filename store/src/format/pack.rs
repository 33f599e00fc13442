//! Pack files: frames of blobs, then a hashed trailer saying what is inside.
//!
//! ```text
//! "CAIRNPK\x01" | frame 0 | frame 1 | ... | trailer | footer (44 bytes)
//! trailer = nonce u64 | frame_count u32 | blob_count u32
//!           | frame_count × (stored_len u32 | codec u8 | blob_count u32)
//!           | blob_count × (id [32] | len u32)
//! footer  = trailer_len u32 | BLAKE3(trailer) [32] | "CAIRNPKE"
//! ```
//! Nothing derivable is stored: frames follow each other from offset 8,
//! a frame's blobs follow each other in it, and its raw length is the sum
//! of theirs. The nonce is 0, except when a writer must store a pack whose
//! name is taken by a damaged pack or one garbage collection has condemned:
//! the same content with another nonce has another name. Readers ignore it.
//! The pack's id is the BLAKE3 of all its bytes. The trailer is hashed on its
//! own too, so a reader (GC, above all) can learn what a pack holds from a
//! range read of its tail, without trusting any index. Every byte of a pack
//! is accounted for: frames are contiguous from offset 8 to the trailer, and
//! the blobs of a frame cover its raw bytes exactly, in order.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::frame::{Codec, Frame, MAX_FRAME_RAW_LEN};
use crate::format::wire::{Put, Reader, len_u32};
use crate::id::{BlobId, PackId};

/// First bytes of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"CAIRNPK\x01";
/// Last bytes of every pack.
pub const PACK_END_MAGIC: [u8; 8] = *b"CAIRNPKE";
/// Length of the fixed footer.
pub const FOOTER_LEN: usize = 4 + 32 + 8;
/// The largest pack a reader accepts: offsets are u32.
pub const MAX_PACK_LEN: u64 = u32::MAX as u64;
/// The largest trailer a reader accepts.
pub const MAX_TRAILER_LEN: u32 = 64 << 20;
const TRAILER_HEADER_LEN: usize = 16;
const FRAME_DESC_LEN: usize = 9;
const BLOB_ENTRY_LEN: usize = 32 + 4;

/// Where a frame lies in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDesc {
    /// Offset of its first stored byte from the start of the pack.
    pub offset: u32,
    /// Stored (compressed) length.
    pub stored_len: u32,
    /// Length once decoded.
    pub raw_len: u32,
    /// How it is stored.
    pub codec: Codec,
}

/// Where a blob lies: in which frame, and where in its raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    /// The blob.
    pub id: BlobId,
    /// Index into the pack's frames.
    pub frame: u32,
    /// Offset in the raw frame.
    pub offset: u32,
    /// Length.
    pub len: u32,
}

/// What a pack contains: its frames and blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackTrailer {
    /// 0, or a value chosen to give the pack another name.
    pub nonce: u64,
    /// Frames in pack order.
    pub frames: Vec<FrameDesc>,
    /// Blobs ordered by (frame, offset).
    pub blobs: Vec<BlobEntry>,
}

impl PackTrailer {
    /// The trailer's bytes. The frames and blobs must be consistent (as
    /// [`PackWriter`] and [`PackTrailer::decode`] make them).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            TRAILER_HEADER_LEN
                + self.frames.len() * FRAME_DESC_LEN
                + self.blobs.len() * BLOB_ENTRY_LEN,
        );
        out.put_u64(self.nonce);
        out.put_u32(len_u32(self.frames.len()));
        out.put_u32(len_u32(self.blobs.len()));
        let mut in_frame = vec![0u32; self.frames.len()];
        for b in &self.blobs {
            if let Some(n) = in_frame.get_mut(b.frame as usize) {
                *n += 1;
            }
        }
        for (f, n) in self.frames.iter().zip(in_frame) {
            out.put_u32(f.stored_len);
            out.put_u8(f.codec as u8);
            out.put_u32(n);
        }
        for b in &self.blobs {
            out.put_bytes(b.id.as_bytes());
            out.put_u32(b.len);
        }
        out
    }

    /// Parses and checks a trailer of a pack whose trailer starts at
    /// `trailer_offset`, deriving every offset. `object` names the pack in errors.
    pub fn decode(bytes: &[u8], trailer_offset: u64, object: &str) -> Result<PackTrailer> {
        let bad = |detail: String| Error::corrupt(object, format!("trailer: {detail}"));
        let short = |e: crate::format::wire::Short| bad(e.to_string());
        let mut r = Reader::new(bytes);
        let nonce = r.u64().map_err(short)?;
        let frame_count = r.u32().map_err(short)? as usize;
        let blob_count = r.u32().map_err(short)? as usize;
        let expected = TRAILER_HEADER_LEN as u64
            + frame_count as u64 * FRAME_DESC_LEN as u64
            + blob_count as u64 * BLOB_ENTRY_LEN as u64;
        if expected != bytes.len() as u64 {
            return Err(bad(format!(
                "{frame_count} frames and {blob_count} blobs need {expected} bytes, trailer has {}",
                bytes.len()
            )));
        }
        let mut frames = Vec::with_capacity(frame_count);
        let mut blobs_per_frame = Vec::with_capacity(frame_count);
        let mut offset = PACK_MAGIC.len() as u64;
        for i in 0..frame_count {
            let stored_len = r.u32().map_err(short)?;
            let codec_byte = r.u8().map_err(short)?;
            let in_frame = r.u32().map_err(short)?;
            let codec = Codec::from_u8(codec_byte)
                .ok_or_else(|| bad(format!("frame {i}: unknown codec {codec_byte}")))?;
            if in_frame == 0 {
                return Err(bad(format!("frame {i} holds no blob")));
            }
            frames.push(FrameDesc {
                offset: u32::try_from(offset).map_err(|_| bad("pack over 4 GiB".into()))?,
                stored_len,
                raw_len: 0,
                codec,
            });
            blobs_per_frame.push(in_frame);
            offset += u64::from(stored_len);
        }
        if offset != trailer_offset {
            return Err(bad(format!(
                "frames end at {offset} but the trailer starts at {trailer_offset}"
            )));
        }
        if blobs_per_frame.iter().map(|&n| u64::from(n)).sum::<u64>() != blob_count as u64 {
            return Err(bad(
                "frame blob counts do not add up to the blob count".into()
            ));
        }
        let mut blobs = Vec::with_capacity(blob_count);
        for (i, (frame, &in_frame)) in frames.iter_mut().zip(&blobs_per_frame).enumerate() {
            let mut raw_len = 0u32;
            for _ in 0..in_frame {
                let id = BlobId(r.id().map_err(short)?);
                let len = r.u32().map_err(short)?;
                if len == 0 {
                    return Err(bad(format!("blob {id} in frame {i} is empty")));
                }
                blobs.push(BlobEntry {
                    id,
                    frame: len_u32(i),
                    offset: raw_len,
                    len,
                });
                raw_len = raw_len
                    .checked_add(len)
                    .filter(|&l| l <= MAX_FRAME_RAW_LEN)
                    .ok_or_else(|| {
                        bad(format!("frame {i} is over {MAX_FRAME_RAW_LEN} raw bytes"))
                    })?;
            }
            if frame.codec == Codec::Raw && frame.stored_len != raw_len {
                return Err(bad(format!(
                    "raw frame {i}: stored {} bytes but its blobs are {raw_len}",
                    frame.stored_len
                )));
            }
            // No zstd encoding of the raw bytes is longer: a reader's range
            // read of one frame stays within 32 MiB and a little.
            if frame.codec == Codec::Zstd
                && u64::from(frame.stored_len) > zstd_compress_bound(u64::from(raw_len))
            {
                return Err(bad(format!(
                    "zstd frame {i}: stored {} bytes, more than any encoding of its {raw_len} raw bytes",
                    frame.stored_len
                )));
            }
            frame.raw_len = raw_len;
        }
        Ok(PackTrailer {
            nonce,
            frames,
            blobs,
        })
    }
}

/// The most bytes zstd encodes `raw` bytes into in one frame
/// (`ZSTD_COMPRESSBOUND`).
pub fn zstd_compress_bound(raw: u64) -> u64 {
    const SMALL: u64 = 128 << 10;
    raw + (raw >> 8) + if raw < SMALL { (SMALL - raw) >> 11 } else { 0 }
}

/// The footer: where the trailer is and its hash.
#[derive(Debug, Clone, Copy)]
pub struct PackFooter {
    /// Trailer length.
    pub trailer_len: u32,
    /// BLAKE3 of the trailer.
    pub trailer_hash: [u8; 32],
}

impl PackFooter {
    /// Parses the last [`FOOTER_LEN`] bytes of a pack.
    pub fn decode(tail: &[u8], object: &str) -> Result<PackFooter> {
        if tail.len() != FOOTER_LEN || tail[FOOTER_LEN - 8..] != PACK_END_MAGIC {
            return Err(Error::corrupt(
                object,
                "footer: end magic missing (truncated?)",
            ));
        }
        let mut r = Reader::new(tail);
        let trailer_len = r.u32().map_err(|e| Error::corrupt(object, e.to_string()))?;
        let trailer_hash = r.id().map_err(|e| Error::corrupt(object, e.to_string()))?;
        if trailer_len > MAX_TRAILER_LEN {
            return Err(Error::corrupt(
                object,
                format!("trailer length {trailer_len} over the limit"),
            ));
        }
        Ok(PackFooter {
            trailer_len,
            trailer_hash,
        })
    }

    /// Where the trailer starts in a pack of `pack_len` bytes.
    pub fn trailer_offset(&self, pack_len: u64, object: &str) -> Result<u64> {
        let fixed = (PACK_MAGIC.len() + FOOTER_LEN) as u64 + u64::from(self.trailer_len);
        if pack_len < fixed || pack_len > MAX_PACK_LEN {
            return Err(Error::corrupt(
                object,
                format!(
                    "length {pack_len} cannot hold a {}-byte trailer",
                    self.trailer_len
                ),
            ));
        }
        Ok(pack_len - FOOTER_LEN as u64 - u64::from(self.trailer_len))
    }
}

/// Reads and checks a trailer given the pack's length and its tail (the last
/// `tail.len()` bytes, at least the footer). `Ok(None)`: the tail is too
/// short to hold the trailer; read more.
pub fn decode_trailer_from_tail(
    pack_len: u64,
    tail: &[u8],
    object: &str,
) -> Result<Option<PackTrailer>> {
    if tail.len() < FOOTER_LEN {
        return Err(Error::corrupt(object, "shorter than a pack footer"));
    }
    let footer = PackFooter::decode(&tail[tail.len() - FOOTER_LEN..], object)?;
    let trailer_offset = footer.trailer_offset(pack_len, object)?;
    let need = FOOTER_LEN + footer.trailer_len as usize;
    if tail.len() < need {
        return Ok(None);
    }
    let trailer = &tail[tail.len() - need..tail.len() - FOOTER_LEN];
    if blake3::hash(trailer).as_bytes() != &footer.trailer_hash {
        return Err(Error::corrupt(object, "trailer hash mismatch"));
    }
    PackTrailer::decode(trailer, trailer_offset, object).map(Some)
}

/// Parses a whole pack: checks its id, magic, footer and trailer.
pub fn decode_pack(bytes: &[u8], expected: PackId) -> Result<PackTrailer> {
    let object = format!("pack {expected}");
    let actual = PackId::of(bytes);
    if actual != expected {
        return Err(Error::corrupt(
            &object,
            format!("content hash is {actual} (length {})", bytes.len()),
        ));
    }
    if bytes.len() < PACK_MAGIC.len() + FOOTER_LEN || bytes[..8] != PACK_MAGIC {
        return Err(Error::corrupt(&object, "not a pack (magic)"));
    }
    decode_trailer_from_tail(bytes.len() as u64, bytes, &object)?
        .ok_or_else(|| Error::corrupt(&object, "trailer longer than the pack"))
}

/// Builds one pack in memory.
#[derive(Debug)]
pub struct PackWriter {
    buf: Vec<u8>,
    trailer: PackTrailer,
}

impl Default for PackWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PackWriter {
    /// An empty pack.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty pack with room for `len` bytes.
    pub fn with_capacity(len: usize) -> Self {
        let mut buf = Vec::with_capacity(len.max(PACK_MAGIC.len()));
        buf.extend_from_slice(&PACK_MAGIC);
        PackWriter {
            buf,
            trailer: PackTrailer::default(),
        }
    }

    /// The pack's length if finished now: frames, trailer and footer.
    pub fn len(&self) -> usize {
        self.buf.len()
            + TRAILER_HEADER_LEN
            + self.trailer.frames.len() * FRAME_DESC_LEN
            + self.trailer.blobs.len() * BLOB_ENTRY_LEN
            + FOOTER_LEN
    }

    /// Whether no frame was added.
    pub fn is_empty(&self) -> bool {
        self.trailer.frames.is_empty()
    }

    /// Appends a frame.
    pub fn add_frame(&mut self, frame: Frame) {
        let index = len_u32(self.trailer.frames.len());
        self.trailer.frames.push(FrameDesc {
            offset: len_u32(self.buf.len()),
            stored_len: len_u32(frame.payload.len()),
            raw_len: frame.raw_len,
            codec: frame.codec,
        });
        self.buf.extend_from_slice(&frame.payload);
        self.trailer
            .blobs
            .extend(frame.blobs.iter().map(|b| BlobEntry {
                id: b.id,
                frame: index,
                offset: b.offset,
                len: b.len,
            }));
    }

    /// Finishes the pack: its id, bytes and trailer.
    pub fn finish(self) -> (PackId, Bytes, PackTrailer) {
        let mut buf = self.buf;
        let trailer = self.trailer.encode();
        let trailer_len = len_u32(trailer.len());
        let hash = blake3::hash(&trailer);
        buf.put_bytes(&trailer);
        buf.put_u32(trailer_len);
        buf.put_bytes(hash.as_bytes());
        buf.put_bytes(&PACK_END_MAGIC);
        (PackId::of(&buf), Bytes::from(buf), self.trailer)
    }
}

/// The same pack under another name: its frames with `nonce` in the trailer.
pub fn renonce(bytes: &[u8], trailer: &PackTrailer, nonce: u64) -> (PackId, Bytes, PackTrailer) {
    let frames_end = trailer.frames.last().map_or(PACK_MAGIC.len(), |f| {
        f.offset as usize + f.stored_len as usize
    });
    let mut trailer = trailer.clone();
    trailer.nonce = nonce;
    let encoded = trailer.encode();
    let mut buf = Vec::with_capacity(frames_end + encoded.len() + FOOTER_LEN);
    buf.put_bytes(&bytes[..frames_end]);
    buf.put_bytes(&encoded);
    buf.put_u32(len_u32(encoded.len()));
    buf.put_bytes(blake3::hash(&encoded).as_bytes());
    buf.put_bytes(&PACK_END_MAGIC);
    (PackId::of(&buf), Bytes::from(buf), trailer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::frame::{FrameBuilder, decode_frame};

    fn sample_pack() -> (PackId, Bytes, PackTrailer, Vec<Vec<u8>>) {
        let blobs: Vec<Vec<u8>> = (0..20u8)
            .map(|i| vec![i; 1000 + usize::from(i) * 37])
            .collect();
        let mut w = PackWriter::new();
        for group in blobs.chunks(7) {
            let mut f = FrameBuilder::default();
            for b in group {
                f.push(BlobId::of(b), b);
            }
            w.add_frame(f.compress(3).unwrap());
        }
        let (id, bytes, trailer) = w.finish();
        (id, bytes, trailer, blobs)
    }

    #[test]
    fn reader_returns_every_blob_the_writer_added() {
        let (id, bytes, trailer, blobs) = sample_pack();
        let parsed = decode_pack(&bytes, id).unwrap();
        assert_eq!(parsed, trailer);
        assert_eq!(parsed.blobs.len(), blobs.len());
        for (entry, original) in parsed.blobs.iter().zip(&blobs) {
            let f = parsed.frames[entry.frame as usize];
            let stored = &bytes[f.offset as usize..][..f.stored_len as usize];
            let raw = decode_frame(f.codec, stored, f.raw_len).unwrap();
            let got = &raw[entry.offset as usize..][..entry.len as usize];
            assert_eq!(got, &original[..]);
            assert_eq!(BlobId::of(got), entry.id);
        }
    }

    #[test]
    fn another_nonce_gives_the_same_pack_another_name() {
        let (id, bytes, trailer, _) = sample_pack();
        let (other, other_bytes, other_trailer) = renonce(&bytes, &trailer, 7);
        assert_ne!(other, id);
        let parsed = decode_pack(&other_bytes, other).unwrap();
        assert_eq!(parsed.nonce, 7);
        assert_eq!(
            (parsed.frames.clone(), parsed.blobs.clone()),
            (trailer.frames, trailer.blobs)
        );
        assert_eq!(parsed, other_trailer);
        assert_eq!(other_bytes[..100], bytes[..100]);
    }

    #[test]
    fn tail_reads_find_the_trailer() {
        let (_, bytes, trailer, _) = sample_pack();
        let short_tail = &bytes[bytes.len() - FOOTER_LEN..];
        assert_eq!(
            decode_trailer_from_tail(bytes.len() as u64, short_tail, "p").unwrap(),
            None
        );
        let tail = &bytes[8..];
        assert_eq!(
            decode_trailer_from_tail(bytes.len() as u64, tail, "p").unwrap(),
            Some(trailer)
        );
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let (id, bytes, _, _) = sample_pack();
        for pos in (0..bytes.len()).step_by(97) {
            let mut damaged = bytes.to_vec();
            damaged[pos] ^= 0x10;
            assert!(decode_pack(&damaged, id).is_err(), "flip at {pos}");
        }
        for cut in [1, 10, FOOTER_LEN, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_pack(&bytes[..bytes.len() - cut], id).is_err());
        }
    }

    #[test]
    fn structurally_inconsistent_trailers_are_rejected() {
        let (_, bytes, trailer, _) = sample_pack();
        let offset = (bytes.len() - FOOTER_LEN - trailer.encode().len()) as u64;
        let mut t = trailer.clone();
        t.frames[1].stored_len += 1;
        assert!(PackTrailer::decode(&t.encode(), offset, "p").is_err());
        let mut bytes = trailer.encode();
        bytes[8..12].copy_from_slice(&9u32.to_le_bytes()); // frame count vs length
        assert!(PackTrailer::decode(&bytes, offset, "p").is_err());
        let mut bytes = trailer.encode();
        bytes[16 + 5..16 + 9].copy_from_slice(&0u32.to_le_bytes()); // frame 0 holds no blob
        assert!(PackTrailer::decode(&bytes, offset, "p").is_err());
        assert!(PackTrailer::decode(&trailer.encode(), offset + 1, "p").is_err());
        assert!(PackTrailer::decode(&trailer.encode(), offset, "p").is_ok());
        // A zstd frame claiming more stored bytes than any encoding of its
        // raw bytes (a range read a hostile trailer could make huge).
        let z = trailer
            .frames
            .iter()
            .position(|f| f.codec == Codec::Zstd)
            .unwrap();
        let bound = zstd_compress_bound(u64::from(trailer.frames[z].raw_len));
        for (extra, ok) in [(0, true), (1, false)] {
            let mut t = trailer.clone();
            let stored = u32::try_from(bound + extra).unwrap();
            let grown = u64::from(stored - t.frames[z].stored_len);
            t.frames[z].stored_len = stored;
            let got = PackTrailer::decode(&t.encode(), offset + grown, "p");
            assert_eq!(got.is_ok(), ok, "{:?}", got.err());
        }
    }

    #[test]
    fn the_compress_bound_is_zstds() {
        for raw in [
            0usize,
            1,
            100,
            4096,
            (128 << 10) - 1,
            128 << 10,
            1 << 20,
            32 << 20,
        ] {
            let ours = zstd_compress_bound(raw as u64);
            assert_eq!(ours, zstd::zstd_safe::compress_bound(raw) as u64, "{raw}");
        }
    }
}
