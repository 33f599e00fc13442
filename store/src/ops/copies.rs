//! Claimed copies of blobs, checked by reading them.
//!
//! An index object can claim anything (format-spec §20: any `append`
//! credential can write one), so garbage collection counts a copy of a live
//! blob as surviving only once it has read it and hashed it: this module
//! finds the copies the index objects claim, plans which frames to read
//! (each frame once per round, each blob's next copy in the next round) and
//! checks them.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};

use crate::backend::{Backend, ObjectKey};
use crate::error::{Error, Result};
use crate::format::frame::{Codec, MAX_FRAME_RAW_LEN, decode_frame};
use crate::format::index::IndexedPack;
use crate::id::{BlobId, IdMap, IdSet, IndexId, PackId};

/// A frame an index object says a pack holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FrameRef {
    pub pack: PackId,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    codec: u8,
}

/// A copy of a blob an index object says a pack holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CopyRef {
    pub frame: FrameRef,
    pub blob: BlobId,
    offset: u32,
    len: u32,
}

/// Every copy of the `wanted` blobs that an index object claims a pack
/// outside `doomed` holds, by blob (each copy once, in a fixed order).
pub(crate) fn claimed_copies(
    index: &[(IndexId, Vec<IndexedPack>)],
    doomed: &IdSet<PackId>,
    wanted: &IdSet<BlobId>,
) -> BTreeMap<BlobId, Vec<CopyRef>> {
    let mut claims: BTreeMap<BlobId, Vec<CopyRef>> = BTreeMap::new();
    if wanted.is_empty() {
        return claims;
    }
    for (_, packs) in index {
        for p in packs.iter().filter(|p| !doomed.contains(&p.id)) {
            for b in p.trailer.blobs.iter().filter(|b| wanted.contains(&b.id)) {
                let Some(f) = p.trailer.frames.get(b.frame as usize) else {
                    continue;
                };
                claims.entry(b.id).or_default().push(CopyRef {
                    frame: FrameRef {
                        pack: p.id,
                        offset: f.offset,
                        stored_len: f.stored_len,
                        raw_len: f.raw_len,
                        codec: f.codec as u8,
                    },
                    blob: b.id,
                    offset: b.offset,
                    len: b.len,
                });
            }
        }
    }
    for copies in claims.values_mut() {
        copies.sort();
        copies.dedup();
    }
    claims
}

/// Which copies to read in round `round`: each blob's `round`-th claimed
/// copy, for blobs not yet verified, grouped by frame.
fn plan_copy_reads(
    claims: &BTreeMap<BlobId, Vec<CopyRef>>,
    verified: &IdMap<BlobId, Vec<PackId>>,
    round: usize,
) -> BTreeMap<FrameRef, Vec<CopyRef>> {
    let mut reads: BTreeMap<FrameRef, Vec<CopyRef>> = BTreeMap::new();
    for (blob, copies) in claims {
        if verified.contains_key(blob) {
            continue;
        }
        if let Some(c) = copies.get(round) {
            reads.entry(c.frame).or_default().push(*c);
        }
    }
    reads
}

/// Checks the copies in one decoded frame: each must lie inside it and hash
/// to its id. `None` for a good copy, else why not.
fn check_frame(raw: &[u8], copies: &[CopyRef]) -> Vec<(CopyRef, Option<String>)> {
    copies
        .iter()
        .map(|c| {
            let (start, end) = (c.offset as usize, c.offset as usize + c.len as usize);
            let why = match raw.get(start..end) {
                None => Some("lies beyond the end of its frame".to_string()),
                Some(bytes) if BlobId::of(bytes) != c.blob => {
                    Some(format!("its bytes hash to {}", BlobId::of(bytes)))
                }
                Some(_) => None,
            };
            (*c, why)
        })
        .collect()
}

/// Reads the claimed copies, trying each blob's copies in turn until one
/// hashes to its id; records the good ones in `verified` and returns the bad
/// ones with why. Reads each needed frame once per round, a few at a time.
pub(crate) async fn verify_copies(
    backend: &Backend,
    claims: BTreeMap<BlobId, Vec<CopyRef>>,
    verified: &mut IdMap<BlobId, Vec<PackId>>,
) -> Result<Vec<(CopyRef, String)>> {
    let mut failed = Vec::new();
    let mut good: IdMap<BlobId, Vec<PackId>> = IdMap::default();
    for round in 0.. {
        let reads = plan_copy_reads(&claims, &good, round);
        if reads.is_empty() {
            break;
        }
        let checked: Vec<Vec<(CopyRef, Option<String>)>> = futures::stream::iter(reads)
            .map(|(frame, copies)| read_and_check(backend, frame, copies))
            .buffer_unordered(4)
            .try_collect()
            .await?;
        for (copy, why) in checked.into_iter().flatten() {
            match why {
                None => good.entry(copy.blob).or_default().push(copy.frame.pack),
                Some(why) => failed.push((copy, why)),
            }
        }
    }
    for (blob, packs) in good {
        verified.entry(blob).or_default().extend(packs);
    }
    Ok(failed)
}

/// Reads one frame by a range read, decodes it and checks `copies` in it.
/// A frame that is missing, short or does not decode fails all its copies;
/// a storage failure is an error.
async fn read_and_check(
    backend: &Backend,
    frame: FrameRef,
    copies: Vec<CopyRef>,
) -> Result<Vec<(CopyRef, Option<String>)>> {
    let fail_all = |why: String| -> Vec<(CopyRef, Option<String>)> {
        copies.iter().map(|c| (*c, Some(why.clone()))).collect()
    };
    let Some(codec) = Codec::from_u8(frame.codec) else {
        return Ok(fail_all(format!("unknown codec {}", frame.codec)));
    };
    if frame.raw_len > MAX_FRAME_RAW_LEN || frame.stored_len > frame.raw_len {
        return Ok(fail_all(format!(
            "frame of {} stored and {} raw bytes is out of range",
            frame.stored_len, frame.raw_len
        )));
    }
    let start = u64::from(frame.offset);
    let range = start..start + u64::from(frame.stored_len);
    let bytes = match backend.get_range(&ObjectKey::Pack(frame.pack), range).await {
        Ok(b) if b.len() == frame.stored_len as usize => b,
        Ok(b) => {
            return Ok(fail_all(format!(
                "a range read of frame at {start} gave {} bytes, not {}",
                b.len(),
                frame.stored_len
            )));
        }
        Err(e @ (Error::Missing { .. } | Error::Corrupt { .. })) => {
            return Ok(fail_all(e.to_string()));
        }
        Err(e) => return Err(e),
    };
    Ok(
        crate::cpu::run(move || match decode_frame(codec, &bytes, frame.raw_len) {
            Ok(raw) => check_frame(&raw, &copies),
            Err(why) => copies
                .iter()
                .map(|c| (*c, Some(format!("its frame does not decode: {why}"))))
                .collect(),
        })
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(pack: u8, blob: &[u8], offset: u32) -> CopyRef {
        CopyRef {
            frame: FrameRef {
                pack: PackId([pack; 32]),
                offset: 8,
                stored_len: 10,
                raw_len: 10,
                codec: 0,
            },
            blob: BlobId::of(blob),
            offset,
            len: u32::try_from(blob.len()).unwrap_or(u32::MAX),
        }
    }

    #[test]
    fn a_copy_counts_only_where_its_bytes_hash_to_its_id() {
        let raw = b"helloworld";
        let checked = check_frame(
            raw,
            &[
                copy(1, b"hello", 0),
                copy(1, b"world", 0),
                copy(1, b"world", 8),
            ],
        );
        assert_eq!(checked[0].1, None);
        assert!(checked[1].1.as_deref().unwrap_or("").contains("hash to"));
        assert!(checked[2].1.as_deref().unwrap_or("").contains("beyond"));
    }

    #[test]
    fn each_round_reads_the_next_claimed_copy_of_blobs_not_yet_verified() {
        let (fake, good) = (copy(1, b"hello", 0), copy(2, b"hello", 0));
        let other = copy(1, b"world", 5);
        let claims: BTreeMap<BlobId, Vec<CopyRef>> =
            [(fake.blob, vec![fake, good]), (other.blob, vec![other])]
                .into_iter()
                .collect();
        let mut verified = IdMap::default();
        // Round 0: both first copies, in one read of their shared frame.
        let reads = plan_copy_reads(&claims, &verified, 0);
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[&fake.frame].len(), 2);
        // The fake failed, the other blob verified: round 1 reads only the second copy.
        verified.insert(other.blob, vec![other.frame.pack]);
        let reads = plan_copy_reads(&claims, &verified, 1);
        assert_eq!(reads.into_values().collect::<Vec<_>>(), vec![vec![good]]);
        assert!(plan_copy_reads(&claims, &verified, 2).is_empty());
    }
}
