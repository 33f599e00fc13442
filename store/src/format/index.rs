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

use std::collections::hash_map::Entry;

use crate::error::{Error, Result};
use crate::format::frame::Codec;
use crate::format::pack::{FOOTER_LEN, MAX_PACK_LEN, MAX_TRAILER_LEN, PACK_MAGIC, PackTrailer};
use crate::format::wire::{Put, Reader, len_u32};
use crate::id::{BlobId, IdMap, IndexId, PackId};

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

/// Every blob the loaded index objects name, by id, with every copy.
///
/// A blob may have several copies (two concurrent backups, a retried
/// backup, a repack not yet collected, or a pack an attacker with write
/// access added whose trailer claims blobs it does not hold). All are kept:
/// the first one loaded in the main map, the rare others in a side map, so
/// the common single copy costs what it always did. A reader checks each
/// copy by hash and falls back to the next (§13.2).
///
/// A pack named by several index objects is kept once per distinct
/// description (length and trailer copy): an index object that lies about a
/// genuine pack adds a second description, it does not replace the first.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    /// Per pack position: where its description came from.
    origins: Vec<PackOrigin>,
    /// The first position of each pack.
    pack_positions: IdMap<PackId, u32>,
    /// Further positions of a pack that index objects describe differently.
    other_pack_positions: IdMap<PackId, Vec<u32>>,
    /// The first copy of each blob.
    blobs: IdMap<BlobId, BlobLocation>,
    /// Further copies, for the few blobs that have them.
    more_copies: IdMap<BlobId, Vec<BlobLocation>>,
    index_objects: Vec<IndexId>,
}

/// Where a pack position's description came from.
#[derive(Debug, Clone)]
struct PackOrigin {
    /// BLAKE3 of the trailer copy (what the pack's footer should hold).
    trailer_hash: [u8; 32],
    /// Positions in `index_objects` of the index objects describing it so.
    named_by: Vec<u32>,
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

    /// Adds the packs of one index object. Every copy of a blob is kept,
    /// the first one added first ([`Index::get`]); a pack already described
    /// the same way (length and trailer) is not added again.
    pub fn add(&mut self, index_id: Option<IndexId>, packs: &[IndexedPack]) {
        let source = index_id.map(|id| {
            self.index_objects.push(id);
            len_u32(self.index_objects.len() - 1)
        });
        for p in packs {
            let trailer_hash = *blake3::hash(&p.trailer.encode()).as_bytes();
            let known = self.pack_positions_of(&p.id).find(|&at| {
                self.packs[at as usize].len == p.len
                    && self.origins[at as usize].trailer_hash == trailer_hash
            });
            if let Some(at) = known {
                let named_by = &mut self.origins[at as usize].named_by;
                if let Some(s) = source
                    && !named_by.contains(&s)
                {
                    named_by.push(s);
                }
                continue;
            }
            let position = len_u32(self.packs.len());
            match self.pack_positions.entry(p.id) {
                Entry::Vacant(v) => {
                    v.insert(position);
                }
                Entry::Occupied(_) => {
                    self.other_pack_positions
                        .entry(p.id)
                        .or_default()
                        .push(position);
                }
            }
            self.origins.push(PackOrigin {
                trailer_hash,
                named_by: source.into_iter().collect(),
            });
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
                let location = BlobLocation {
                    pack: position,
                    frame: b.frame,
                    offset: b.offset,
                    len: b.len,
                };
                match self.blobs.entry(b.id) {
                    Entry::Vacant(v) => {
                        v.insert(location);
                    }
                    Entry::Occupied(_) => {
                        self.more_copies.entry(b.id).or_default().push(location);
                    }
                }
            }
        }
    }

    /// Where `id` is, if any index names it: its first copy.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.blobs.get(id).copied()
    }

    /// Every copy of `id` the index names, the one [`Index::get`] gives first.
    pub fn locations(&self, id: &BlobId) -> impl Iterator<Item = BlobLocation> + '_ {
        self.blobs.get(id).copied().into_iter().chain(
            self.more_copies
                .get(id)
                .into_iter()
                .flat_map(|more| more.iter().copied()),
        )
    }

    /// How many copies of `id` the index names.
    pub fn copy_count(&self, id: &BlobId) -> usize {
        usize::from(self.blobs.contains_key(id)) + self.more_copies.get(id).map_or(0, Vec::len)
    }

    /// Whether any index names `id`.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// The pack at a position from a [`BlobLocation`].
    pub fn pack(&self, position: u32) -> &PackInfo {
        &self.packs[position as usize]
    }

    /// The position of a pack, if indexed (its first description).
    pub fn pack_position(&self, id: &PackId) -> Option<u32> {
        self.pack_positions.get(id).copied()
    }

    /// Every position of a pack: one per distinct description of it.
    pub fn pack_positions_of(&self, id: &PackId) -> impl Iterator<Item = u32> + '_ {
        self.pack_positions.get(id).copied().into_iter().chain(
            self.other_pack_positions
                .get(id)
                .into_iter()
                .flat_map(|more| more.iter().copied()),
        )
    }

    /// BLAKE3 of the trailer copy at a position: equal to the footer's
    /// trailer hash of the pack it describes, if the description is true.
    pub fn trailer_hash(&self, position: u32) -> [u8; 32] {
        self.origins[position as usize].trailer_hash
    }

    /// The index objects that describe the pack at `position` so.
    pub fn named_by(&self, position: u32) -> impl Iterator<Item = IndexId> + '_ {
        self.origins[position as usize]
            .named_by
            .iter()
            .map(|&i| self.index_objects[i as usize])
    }

    /// All indexed packs: a pack appears once per distinct description.
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

    /// Iterates over all blobs and their first locations.
    pub fn blobs(&self) -> impl Iterator<Item = (&BlobId, &BlobLocation)> {
        self.blobs.iter()
    }

    /// Iterates over every copy of every blob.
    pub fn copies(&self) -> impl Iterator<Item = (&BlobId, &BlobLocation)> {
        self.blobs.iter().chain(
            self.more_copies
                .iter()
                .flat_map(|(id, more)| more.iter().map(move |l| (id, l))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::frame::FrameBuilder;
    use crate::format::pack::PackWriter;

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
    fn every_copy_of_a_blob_is_kept_first_one_first() {
        let one = pack_of(&[b"alpha", b"beta"]);
        let two = pack_of(&[b"beta", b"gamma"]);
        let mut index = Index::new();
        let (a, b) = (IndexId::of(b"a"), IndexId::of(b"b"));
        index.add(Some(a), std::slice::from_ref(&one));
        index.add(Some(b), &[two.clone(), one.clone()]);
        // The same pack described the same way is kept once, named by both.
        assert_eq!(index.packs().len(), 2);
        assert_eq!(index.named_by(0).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(index.blob_count(), 3);
        let beta = BlobId::of(b"beta");
        let copies: Vec<u32> = index.locations(&beta).map(|l| l.pack).collect();
        assert_eq!(copies, vec![0, 1]);
        assert_eq!(index.get(&beta).unwrap().pack, 0);
        assert_eq!(index.copy_count(&beta), 2);
        assert_eq!(index.copies().count(), 4);
        assert_eq!(index.blobs().count(), 3);

        // Another description of a known pack (a lying trailer copy) is a
        // second position, not a replacement.
        let mut lie = one.clone();
        lie.trailer.blobs.swap(0, 1);
        lie.trailer.blobs[0].offset = 0;
        index.add(Some(IndexId::of(b"c")), &[lie]);
        assert_eq!(index.packs().len(), 3);
        assert_eq!(index.pack_position(&one.id), Some(0));
        assert_eq!(
            index.pack_positions_of(&one.id).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_ne!(index.trailer_hash(0), index.trailer_hash(2));
        assert_eq!(index.copy_count(&BlobId::of(b"alpha")), 2);
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
