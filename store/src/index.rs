//! Index objects and the in-memory index built from them.
//!
//! An index object lists packs, each with its length and a copy of its
//! trailer, so one format describes "what a pack holds" in both places:
//! ```text
//! "CAIRNIX\x01" | nonce u64 | pack_count u32
//!   | pack_count × (pack id [32] | pack_len u64 | trailer_len u32 | trailer)
//! ```
//! The nonce is 0, except when a writer must store an index whose name is
//! taken by a damaged copy (create-only writes cannot replace it): it then
//! picks another nonce, hence another name. Readers ignore it.
//! The index object's id is the BLAKE3 of its bytes. A backup writes one
//! index object for the packs it wrote, after they are stored and before its
//! snapshot, so whatever an index names exists.

use crate::error::{Error, Result};
use crate::frame::Codec;
use crate::id::{BlobId, IdMap, IndexId, PackId};
use crate::pack::{FOOTER_LEN, MAX_PACK_LEN, MAX_TRAILER_LEN, PACK_MAGIC, PackTrailer};
use crate::wire::{Put, Reader, len_u32};

/// First bytes of every index object.
pub const INDEX_MAGIC: [u8; 8] = *b"CAIRNIX\x01";

/// One pack as an index object records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    /// The pack.
    pub id: PackId,
    /// Its length in bytes.
    pub len: u64,
    /// Its trailer.
    pub trailer: PackTrailer,
}

/// Encodes an index object.
pub fn encode_index(packs: &[IndexedPack], nonce: u64) -> Vec<u8> {
    let mut out = INDEX_MAGIC.to_vec();
    out.put_u64(nonce);
    out.put_u32(len_u32(packs.len()));
    for p in packs {
        let trailer = p.trailer.encode();
        out.put_bytes(p.id.as_bytes());
        out.put_u64(p.len);
        out.put_u32(len_u32(trailer.len()));
        out.put_bytes(&trailer);
    }
    out
}

/// Decodes and checks an index object named `expected`.
pub fn decode_index(bytes: &[u8], expected: IndexId) -> Result<Vec<IndexedPack>> {
    let object = format!("index {expected}");
    let actual = IndexId::of(bytes);
    if actual != expected {
        return Err(Error::corrupt(&object, format!("content hash is {actual}")));
    }
    let bad = |detail: String| Error::corrupt(&object, detail);
    let mut r = Reader::new(bytes);
    let magic = r.array::<8>().map_err(|e| bad(e.to_string()))?;
    if magic != INDEX_MAGIC {
        return Err(bad("not an index object (magic)".into()));
    }
    let _nonce = r.u64().map_err(|e| bad(e.to_string()))?;
    let count = r.u32().map_err(|e| bad(e.to_string()))?;
    // Each pack takes at least 44 bytes + a 16-byte trailer: bound before allocating.
    if u64::from(count) * 60 > r.remaining() as u64 {
        return Err(bad(format!(
            "claims {count} packs in {} bytes",
            r.remaining()
        )));
    }
    let mut packs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let id = PackId(r.id().map_err(|e| bad(e.to_string()))?);
        let len = r.u64().map_err(|e| bad(e.to_string()))?;
        let trailer_len = r.u32().map_err(|e| bad(e.to_string()))?;
        if trailer_len > MAX_TRAILER_LEN || len > MAX_PACK_LEN {
            return Err(bad(format!("pack {i}: lengths out of range")));
        }
        let trailer_offset = len
            .checked_sub((FOOTER_LEN + PACK_MAGIC.len()) as u64 + u64::from(trailer_len))
            .ok_or_else(|| bad(format!("pack {id}: length {len} too short for its trailer")))?
            + PACK_MAGIC.len() as u64;
        let trailer_bytes = r
            .bytes(trailer_len as usize)
            .map_err(|e| bad(e.to_string()))?;
        let trailer = PackTrailer::decode(trailer_bytes, trailer_offset, &object)?;
        packs.push(IndexedPack { id, len, trailer });
    }
    if r.remaining() != 0 {
        return Err(bad(format!("{} trailing bytes", r.remaining())));
    }
    Ok(packs)
}

/// Where a blob can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    /// Frame within the pack.
    pub frame: u32,
    /// Offset in the raw frame.
    pub offset: u32,
    /// Blob length.
    pub len: u32,
}

/// A frame's place in a pack, as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLocation {
    /// Offset in the pack.
    pub offset: u32,
    /// Stored length.
    pub stored_len: u32,
    /// Decoded length.
    pub raw_len: u32,
    /// Codec.
    pub codec: Codec,
}

/// A pack known to the index.
#[derive(Debug, Clone)]
pub struct PackInfo {
    /// The pack.
    pub id: PackId,
    /// Its length.
    pub len: u64,
    /// Its frames.
    pub frames: Vec<FrameLocation>,
    /// How many blobs it holds.
    pub blob_count: u32,
}

/// Every blob the loaded index objects name, by id.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_positions: IdMap<PackId, u32>,
    blobs: IdMap<BlobId, BlobLocation>,
    index_objects: Vec<IndexId>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with room for `blobs` blobs (sized once: a hash table
    /// that doubles while it is filled briefly holds two copies of itself).
    pub fn with_capacity(blobs: usize) -> Self {
        Index {
            blobs: IdMap::with_capacity_and_hasher(blobs, Default::default()),
            ..Self::default()
        }
    }

    /// Adds the packs of one index object. A blob already known keeps its
    /// first location (any copy is as good: it is checked by hash on read).
    pub fn add(&mut self, index_id: Option<IndexId>, packs: &[IndexedPack]) {
        if let Some(id) = index_id {
            self.index_objects.push(id);
        }
        for p in packs {
            if self.pack_positions.contains_key(&p.id) {
                continue;
            }
            let position = len_u32(self.packs.len());
            self.pack_positions.insert(p.id, position);
            self.packs.push(PackInfo {
                id: p.id,
                len: p.len,
                frames: p
                    .trailer
                    .frames
                    .iter()
                    .map(|f| FrameLocation {
                        offset: f.offset,
                        stored_len: f.stored_len,
                        raw_len: f.raw_len,
                        codec: f.codec,
                    })
                    .collect(),
                blob_count: len_u32(p.trailer.blobs.len()),
            });
            for b in &p.trailer.blobs {
                self.blobs.entry(b.id).or_insert(BlobLocation {
                    pack: position,
                    frame: b.frame,
                    offset: b.offset,
                    len: b.len,
                });
            }
        }
    }

    /// Where `id` is, if any index names it.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.blobs.get(id).copied()
    }

    /// Whether any index names `id`.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// The pack at a position from a [`BlobLocation`].
    pub fn pack(&self, position: u32) -> &PackInfo {
        &self.packs[position as usize]
    }

    /// The position of a pack, if indexed.
    pub fn pack_position(&self, id: &PackId) -> Option<u32> {
        self.pack_positions.get(id).copied()
    }

    /// All indexed packs.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// Number of distinct blobs.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// The index objects loaded.
    pub fn index_objects(&self) -> &[IndexId] {
        &self.index_objects
    }

    /// Iterates over all blobs and their locations.
    pub fn blobs(&self) -> impl Iterator<Item = (&BlobId, &BlobLocation)> {
        self.blobs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameBuilder;
    use crate::pack::PackWriter;

    fn pack_of(blobs: &[&[u8]]) -> IndexedPack {
        let mut w = PackWriter::new();
        let mut f = FrameBuilder::default();
        for b in blobs {
            f.push(BlobId::of(b), b);
        }
        w.add_frame(f.compress(3).unwrap());
        let (id, bytes, trailer) = w.finish();
        IndexedPack {
            id,
            len: bytes.len() as u64,
            trailer,
        }
    }

    #[test]
    fn index_objects_round_trip_and_locate_blobs() {
        let packs = vec![pack_of(&[b"alpha", b"beta"]), pack_of(&[b"gamma"])];
        let bytes = encode_index(&packs, 0);
        let id = IndexId::of(&bytes);
        let decoded = decode_index(&bytes, id).unwrap();
        assert_eq!(decoded, packs);

        let mut index = Index::new();
        index.add(Some(id), &decoded);
        assert_eq!(index.blob_count(), 3);
        let loc = index.get(&BlobId::of(b"beta")).unwrap();
        assert_eq!(index.pack(loc.pack).id, packs[0].id);
        assert_eq!((loc.frame, loc.offset, loc.len), (0, 5, 4));
        assert!(!index.contains(&BlobId::of(b"delta")));
    }

    #[test]
    fn damaged_index_objects_are_rejected() {
        let bytes = encode_index(&[pack_of(&[b"alpha"])], 0);
        let id = IndexId::of(&bytes);
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(decode_index(&flipped, id).is_err());
        // A consistent hash but a lying count must not allocate wildly or panic.
        let mut lying = bytes.clone();
        lying[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_index(&lying, IndexId::of(&lying)).is_err());
        let truncated = &bytes[..bytes.len() - 3];
        assert!(decode_index(truncated, IndexId::of(truncated)).is_err());
    }
}
