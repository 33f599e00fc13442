#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
//! The format test vectors in `format-spec/` and the v1 fixture repository
//! (`couchdb.json` is CouchDB's: `couch/tests/vectors.rs` checks it).
//!
//! Each vector test builds its vector from fixed inputs with the library (the
//! writer direction) and requires the stored file to be identical to what it
//! built, byte for byte; then it decodes the stored bytes and checks them
//! against the values the file states (the reader direction), partly with
//! the library and partly with small independent decoders written from
//! `format-spec/README.md`. A failure means the on-disk format changed.
//!
//! To change the format deliberately: run
//! `CAIRN_REGENERATE_VECTORS=1 cargo test -p cairn-store --test vectors`,
//! review the diff of `format-spec/`, and record the change in the version
//! history of `format-spec/README.md`. The fixture repository is never
//! rewritten: it is created only when `format-spec/fixture-repo-v1/` is
//! absent and regeneration is asked for, because every later version must
//! still read the one that exists.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use cairn_store::ErrorKind;
use cairn_store::backend::{Backend, BackendOptions};
use cairn_store::format::chunker::{Chunker, ChunkerAlgorithm, ChunkerParams, ChunkingPolicy};
use cairn_store::format::config::Config;
use cairn_store::format::frame::{
    Codec, CompressionAlgorithm, CompressionParams, Frame, FrameBuilder, decode_frame,
};
use cairn_store::format::index::{IndexedPack, decode_index, encode_index};
use cairn_store::format::key::{PublicKey, SecretKey};
use cairn_store::format::manifest::{
    Item, ItemKind, MANIFEST_MAGIC, Manifest, SIGNATURE_DOMAIN, SourceInfo, SourceKind, Trust,
    decode_manifest,
};
use cairn_store::format::pack::{
    FOOTER_LEN, PACK_END_MAGIC, PACK_MAGIC, PackFooter, PackWriter, decode_pack,
    decode_trailer_from_tail,
};
use cairn_store::format::tree::{TREE_MAGIC, TreeEntry, TreeNode, TreeParams, build_tree};
use cairn_store::id::{BlobId, IndexId, PackId, RepoId, SnapshotId};

// ---------------------------------------------------------------------------
// Fixed inputs shared by the vectors.

/// The signing key's seed: 32 bytes of 0x01.
const KEY_SEED: [u8; 32] = [0x01; 32];
/// The repository id: 32 bytes of 0x02.
const REPO_ID: [u8; 32] = [0x02; 32];
/// When the vector repository was "created".
const CREATED: &str = "2025-01-01T00:00:00Z";
/// The zstd level of the vectors.
const LEVEL: i32 = 3;

// The parameters of the vectors, spelled out: changing a default for new
// repositories is not a format change and must not change the vectors.

/// The 2 KiB class (the default policy's smallest).
const SMALL: ChunkerParams = ChunkerParams {
    algorithm: ChunkerAlgorithm::FastCdc2020,
    min_len: 512,
    avg_len: 2048,
    max_len: 16384,
    normalization: 1,
};
/// The 64 KiB class (the default policy's largest).
const LARGE: ChunkerParams = ChunkerParams {
    algorithm: ChunkerAlgorithm::FastCdc2020,
    min_len: 16384,
    avg_len: 65536,
    max_len: 524288,
    normalization: 1,
};
const POLICY: ChunkingPolicy = ChunkingPolicy {
    algorithm: ChunkerAlgorithm::FastCdc2020,
    normalization: 1,
    min_avg_len: 2048,
    max_avg_len: 65536,
    target_stored_len: 512,
};
const COMPRESSION: CompressionParams = CompressionParams {
    algorithm: CompressionAlgorithm::Zstd,
    level: LEVEL,
    frame_target_len: 512 * 1024,
};
const TREE: TreeParams = TreeParams {
    avg_fanout: 8,
    min_fanout: 2,
    max_fanout: 256,
};

fn key() -> SecretKey {
    SecretKey::from_seed(&KEY_SEED)
}

/// The config of the vectors and of the fixture repository.
fn vector_config() -> Config {
    Config {
        version: 1,
        id: RepoId(REPO_ID),
        created: CREATED.parse().unwrap(),
        chunking: POLICY,
        compression: COMPRESSION,
        tree: TREE,
        pack_target_len: 16 << 20,
        trusted_keys: vec![key().public()],
    }
}

// ---------------------------------------------------------------------------
// Plumbing: where the vectors live, and comparing or rewriting them.

#[path = "vectors/plumbing.rs"]
mod plumbing;

use plumbing::*;

/// The first `len` bytes of the BLAKE3 extendable output of `seed`.
fn xof(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn codec_name(codec: Codec) -> String {
    match codec {
        Codec::Raw => "raw",
        Codec::Zstd => "zstd",
    }
    .into()
}

// ---------------------------------------------------------------------------
// chunker.json

/// The seed of the chunker input.
const CHUNKER_SEED: &str = "cairn format-spec v1 chunker";
/// Its length: 256 KiB.
const CHUNKER_INPUT_LEN: usize = 256 * 1024;

#[derive(Serialize, Deserialize)]
struct ChunkerVectors {
    description: Vec<String>,
    gear_rule: String,
    gear: Vec<String>,
    masks: Vec<String>,
    cases: Vec<ChunkerCase>,
}

#[derive(Serialize, Deserialize)]
struct Input {
    /// `blake3-xof`: the first `len` bytes of BLAKE3-XOF(`seed` as UTF-8); `zeros`: `len` zero bytes.
    generator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<String>,
    len: usize,
    /// BLAKE3 of the input, to check a regenerated input.
    blake3: String,
}

impl Input {
    fn xof(len: usize) -> Input {
        Input {
            generator: "blake3-xof".into(),
            seed: Some(CHUNKER_SEED.into()),
            len,
            blake3: BlobId::of(&xof(CHUNKER_SEED, len)).to_hex(),
        }
    }

    fn zeros(len: usize) -> Input {
        Input {
            generator: "zeros".into(),
            seed: None,
            len,
            blake3: BlobId::of(&vec![0u8; len]).to_hex(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let data = match self.generator.as_str() {
            "blake3-xof" => xof(self.seed.as_deref().unwrap(), self.len),
            "zeros" => vec![0u8; self.len],
            other => panic!("unknown generator {other}"),
        };
        assert_eq!(BlobId::of(&data).to_hex(), self.blake3, "regenerated input");
        data
    }
}

#[derive(Serialize, Deserialize)]
struct ChunkerCase {
    name: String,
    input: Input,
    params: ChunkerParams,
    mask_s: String,
    mask_l: String,
    /// Chunk end offsets.
    cut_points: Vec<u64>,
    /// BLAKE3 of each chunk (first case only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunk_ids: Vec<String>,
}

fn parse_u64_hex(s: &str) -> u64 {
    u64::from_str_radix(s.strip_prefix("0x").unwrap(), 16).unwrap()
}

/// The gear table as stored (it is not public in `fastcdc`; it is checked
/// against the library's cuts below and against the README's appendix).
fn stored_gear() -> Vec<String> {
    let text = std::fs::read_to_string(spec_dir().join("chunker.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    let gear: Vec<String> = serde_json::from_value(value["gear"].clone()).unwrap();
    assert_eq!(gear.len(), 256);
    gear
}

/// FastCDC 2020 cut points exactly as the README describes them: one byte at
/// a time, from the spec's gear table and masks.
fn spec_cut_points(data: &[u8], p: &ChunkerParams, masks: &[u64], gear: &[u64]) -> Vec<u64> {
    let (min, avg, max) = (p.min_len as usize, p.avg_len as usize, p.max_len as usize);
    let bits = (avg as f64).log2().round() as usize;
    let level = usize::from(p.normalization);
    let (mask_s, mask_l) = (masks[bits + level], masks[bits - level]);
    let mut cuts = Vec::new();
    let mut start = 0usize;
    while start < data.len() {
        let n = data.len() - start;
        let len = if n <= min {
            n
        } else {
            let window = n.min(max);
            let mut hash = 0u64;
            let mut len = window;
            // Positions min..(window rounded down to even) are tested.
            for i in min..(window & !1) {
                hash = (hash << 1).wrapping_add(gear[usize::from(data[start + i])]);
                let mask = if i < avg { mask_s } else { mask_l };
                if hash & mask == 0 {
                    len = i;
                    break;
                }
            }
            len
        };
        start += len;
        cuts.push(start as u64);
    }
    cuts
}

fn masks_hex() -> Vec<String> {
    fastcdc::v2020::MASKS
        .iter()
        .map(|m| format!("0x{m:016x}"))
        .collect()
}

fn chunker_case(name: &str, input: Input, params: ChunkerParams, with_ids: bool) -> ChunkerCase {
    let data = input.bytes();
    let level = match params.normalization {
        0 => fastcdc::v2020::Normalization::Level0,
        1 => fastcdc::v2020::Normalization::Level1,
        2 => fastcdc::v2020::Normalization::Level2,
        _ => fastcdc::v2020::Normalization::Level3,
    };
    let (mask_s, mask_l) = fastcdc::v2020::select_masks(params.avg_len as usize, level);
    let cut_points = Chunker::new(params).unwrap().cut_points(&data);
    let chunk_ids = if with_ids {
        let mut start = 0usize;
        cut_points
            .iter()
            .map(|&end| {
                let id = BlobId::of(&data[start..end as usize]).to_hex();
                start = end as usize;
                id
            })
            .collect()
    } else {
        Vec::new()
    };
    ChunkerCase {
        name: name.into(),
        input,
        params,
        mask_s: format!("0x{mask_s:016x}"),
        mask_l: format!("0x{mask_l:016x}"),
        cut_points,
        chunk_ids,
    }
}

#[test]
fn chunker_vectors() {
    let (small, large) = (SMALL, LARGE);
    assert_eq!(POLICY.params(POLICY.min_avg_len), small);
    assert_eq!(POLICY.params(POLICY.max_avg_len), large);
    let with_level = |level: u8| ChunkerParams {
        normalization: level,
        ..small
    };
    let produced = ChunkerVectors {
        description: lines(
            "FastCDC 2020 cut points (chunk end offsets) for fixed inputs; see README.md, \"Chunking\".\n\
             An input is regenerated from `input`: generator `blake3-xof` is the first `len` bytes of the\n\
             BLAKE3 extendable output (XOF) of the UTF-8 bytes of `seed`; `zeros` is `len` zero bytes.\n\
             `blake3` is the BLAKE3 of the input, to check the regeneration. Every input is a prefix of the\n\
             same stream. `mask_s`/`mask_l` are the masks `params` select from `masks`. `chunk_ids` (first\n\
             case) are the BLAKE3 ids of the chunks. `gear` is the gear table, generated by `gear_rule`.",
        ),
        gear_rule: "gear[i] = the first 8 bytes, read as a big-endian u64, of MD5 over 64 bytes each equal to i \
                    (fastcdc crate 5.0.0, src/v2020/mod.rs, GEAR; seed 0)"
            .into(),
        gear: stored_gear(),
        masks: masks_hex(),
        cases: vec![
            chunker_case(
                "2 KiB class (512 / 2048 / 16384, normalization 1)",
                Input::xof(CHUNKER_INPUT_LEN),
                small,
                true,
            ),
            chunker_case(
                "64 KiB class (16384 / 65536 / 524288, normalization 1)",
                Input::xof(CHUNKER_INPUT_LEN),
                large,
                false,
            ),
            chunker_case(
                "2 KiB class, normalization 0",
                Input::xof(CHUNKER_INPUT_LEN),
                with_level(0),
                false,
            ),
            chunker_case(
                "2 KiB class, normalization 3",
                Input::xof(CHUNKER_INPUT_LEN),
                with_level(3),
                false,
            ),
            chunker_case(
                "zeros: no content-defined cut, so max_len chunks and a short tail",
                Input::zeros(40_000),
                small,
                false,
            ),
            chunker_case(
                "exactly min_len bytes: one chunk",
                Input::xof(512),
                small,
                false,
            ),
            chunker_case(
                "min_len + 1 bytes: one chunk (no even position left to test)",
                Input::xof(513),
                small,
                false,
            ),
            // The stream's first cut is at 1390 (the first case): position
            // 1390 is where the hash, which includes byte 1390, matches.
            chunker_case(
                "1391 bytes (odd): position 1390 would cut, but the last position of an odd final window is never tested",
                Input::xof(1391),
                small,
                false,
            ),
            chunker_case(
                "1392 bytes: position 1390 is tested and cuts; the 2-byte tail is the last chunk",
                Input::xof(1392),
                small,
                false,
            ),
            chunker_case(
                "2 KiB class, 100 000 bytes",
                Input::xof(100_000),
                small,
                false,
            ),
        ],
    };
    let stored = settle("chunker.json", &produced);

    // Reader direction: the spec's algorithm, the library and the fastcdc
    // crate's reference iterator all give the stored cut points.
    let gear: Vec<u64> = stored.gear.iter().map(|g| parse_u64_hex(g)).collect();
    let masks: Vec<u64> = stored.masks.iter().map(|m| parse_u64_hex(m)).collect();
    assert_eq!(masks.len(), 26);
    for case in &stored.cases {
        let data = case.input.bytes();
        let p = case.params;
        p.validate().unwrap();
        let bits = (f64::from(p.avg_len)).log2().round() as usize;
        let level = usize::from(p.normalization);
        assert_eq!(
            masks[bits + level],
            parse_u64_hex(&case.mask_s),
            "{}",
            case.name
        );
        assert_eq!(
            masks[bits - level],
            parse_u64_hex(&case.mask_l),
            "{}",
            case.name
        );
        assert_eq!(
            spec_cut_points(&data, &p, &masks, &gear),
            case.cut_points,
            "{}: the README's algorithm",
            case.name
        );
        assert_eq!(
            Chunker::new(p).unwrap().cut_points(&data),
            case.cut_points,
            "{}: the library",
            case.name
        );
        let level = match p.normalization {
            0 => fastcdc::v2020::Normalization::Level0,
            1 => fastcdc::v2020::Normalization::Level1,
            2 => fastcdc::v2020::Normalization::Level2,
            _ => fastcdc::v2020::Normalization::Level3,
        };
        let reference: Vec<u64> = fastcdc::v2020::FastCDC::with_level(
            &data,
            p.min_len as usize,
            p.avg_len as usize,
            p.max_len as usize,
            level,
        )
        .map(|c| (c.offset + c.length) as u64)
        .collect();
        assert_eq!(reference, case.cut_points, "{}: fastcdc 5.0.0", case.name);
        // Chunk lengths obey the rules.
        let mut start = 0u64;
        for (i, &end) in case.cut_points.iter().enumerate() {
            let len = end - start;
            assert!(len <= u64::from(p.max_len));
            assert!(len >= u64::from(p.min_len) || i + 1 == case.cut_points.len());
            if !case.chunk_ids.is_empty() {
                let id = BlobId::of(&data[start as usize..end as usize]);
                assert_eq!(id.to_hex(), case.chunk_ids[i]);
            }
            start = end;
        }
        assert_eq!(start, data.len() as u64);
    }

    // The README's appendix holds the same tables.
    let readme = std::fs::read_to_string(spec_dir().join("README.md")).unwrap();
    assert_eq!(
        hex_words_between(
            &readme,
            "<!-- gear-table-begin -->",
            "<!-- gear-table-end -->"
        ),
        stored.gear,
        "README.md gear table"
    );
    assert_eq!(
        hex_words_between(&readme, "<!-- masks-begin -->", "<!-- masks-end -->"),
        stored.masks,
        "README.md masks"
    );
}

/// The `0x` + 16 hex digit words between two markers.
fn hex_words_between(text: &str, begin: &str, end: &str) -> Vec<String> {
    let from = text
        .find(begin)
        .unwrap_or_else(|| panic!("{begin} missing"))
        + begin.len();
    let to = from + text[from..].find(end).unwrap();
    text[from..to]
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() == 18 && w.starts_with("0x"))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// blob.json: frames of blobs.

#[derive(Serialize, Deserialize)]
struct BlobVectors {
    description: Vec<String>,
    zstd_level: i32,
    frames: Vec<FrameVector>,
}

#[derive(Serialize, Deserialize)]
struct FrameVector {
    name: String,
    codec: String,
    codec_byte: u8,
    raw_len: u32,
    stored_len: u32,
    stored_hex: String,
    blobs: Vec<BlobVector>,
}

#[derive(Serialize, Deserialize)]
struct BlobVector {
    id: String,
    offset: u32,
    len: u32,
    hex: String,
}

/// The blobs of the two vector frames: compressible JSON lines, and bytes
/// that do not compress.
fn frame_inputs() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let text: Vec<Vec<u8>> = (1..=3)
        .map(|k| {
            (0..4)
                .map(|i| {
                    format!(
                        "{{\"_id\":\"doc-{k}{i}\",\"course\":\"intro-to-cairn\",\"progress\":{}}}\n",
                        25 * i
                    )
                })
                .collect::<String>()
                .into_bytes()
        })
        .collect();
    let random = vec![xof("cairn format-spec v1 incompressible blob", 64)];
    vec![
        ("three JSON-lines blobs: compressed (zstd)", text),
        ("one incompressible blob: stored raw", random),
    ]
}

fn build_frame(blobs: &[Vec<u8>]) -> Frame {
    let mut builder = FrameBuilder::default();
    for b in blobs {
        builder.push(BlobId::of(b), b);
    }
    builder.compress(LEVEL).unwrap()
}

#[test]
fn blob_vectors() {
    let produced = BlobVectors {
        description: lines(
            "Frames: consecutive blobs stored together, compressed as one zstd frame when that is\n\
             smaller, else raw; see README.md, \"Blobs and frames\". Each blob's id is BLAKE3 of its\n\
             bytes; `offset` is its place in the raw (decoded) frame. `stored_hex` is what a pack holds.\n\
             zstd output is pinned to the zstd library this build links (zstd 1.5.7, level 3): another\n\
             compressor may produce different, equally valid bytes.",
        ),
        zstd_level: LEVEL,
        frames: frame_inputs()
            .into_iter()
            .map(|(name, blobs)| {
                let frame = build_frame(&blobs);
                FrameVector {
                    name: name.into(),
                    codec: codec_name(frame.codec),
                    codec_byte: frame.codec as u8,
                    raw_len: frame.raw_len,
                    stored_len: frame.payload.len() as u32,
                    stored_hex: hex::encode(&frame.payload),
                    blobs: frame
                        .blobs
                        .iter()
                        .zip(&blobs)
                        .map(|(b, bytes)| BlobVector {
                            id: b.id.to_hex(),
                            offset: b.offset,
                            len: b.len,
                            hex: hex::encode(bytes),
                        })
                        .collect(),
                }
            })
            .collect(),
    };
    let stored = settle("blob.json", &produced);

    assert_eq!(stored.frames[0].codec, "zstd");
    assert_eq!(stored.frames[1].codec, "raw");
    for f in &stored.frames {
        let codec = Codec::from_u8(f.codec_byte).unwrap();
        assert_eq!(codec_name(codec), f.codec);
        let stored_bytes = unhex(&f.stored_hex);
        assert_eq!(stored_bytes.len() as u32, f.stored_len);
        let raw = decode_frame(codec, &stored_bytes, f.raw_len).unwrap();
        // The blobs cover the raw frame exactly, in order.
        let mut at = 0u32;
        for b in &f.blobs {
            assert_eq!(b.offset, at);
            let bytes = &raw[b.offset as usize..(b.offset + b.len) as usize];
            assert_eq!(hex::encode(bytes), b.hex);
            assert_eq!(BlobId::of(bytes).to_hex(), b.id);
            at += b.len;
        }
        assert_eq!(at, f.raw_len);
        // A wrong raw length is refused.
        assert!(decode_frame(codec, &stored_bytes, f.raw_len + 1).is_err());
        assert!(decode_frame(codec, &stored_bytes, f.raw_len - 1).is_err());
        if codec == Codec::Zstd {
            assert!(stored_bytes.len() < raw.len());
            // The zstd frame magic, little-endian 0xFD2FB528.
            assert_eq!(stored_bytes[..4], [0x28, 0xb5, 0x2f, 0xfd]);
        } else {
            assert_eq!(stored_bytes, raw);
        }
    }
}

// ---------------------------------------------------------------------------
// pack.json

#[derive(Serialize, Deserialize)]
struct PackVectors {
    description: Vec<String>,
    id: String,
    len: u64,
    hex: String,
    frames: Vec<PackFrameVector>,
    blobs: Vec<PackBlobVector>,
    trailer: TrailerVector,
    footer: FooterVector,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct PackFrameVector {
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    codec_byte: u8,
    blob_count: u32,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct PackBlobVector {
    id: String,
    frame: u32,
    offset: u32,
    len: u32,
}

#[derive(Serialize, Deserialize)]
struct TrailerVector {
    offset: u64,
    len: u32,
    blake3: String,
    hex: String,
}

#[derive(Serialize, Deserialize)]
struct FooterVector {
    offset: u64,
    trailer_len: u32,
    trailer_hash: String,
    end_magic_hex: String,
    hex: String,
}

/// The vector pack: the two frames of `blob.json`.
fn vector_pack() -> (PackId, Vec<u8>) {
    let mut writer = PackWriter::new();
    for (_, blobs) in frame_inputs() {
        writer.add_frame(build_frame(&blobs));
    }
    let (id, bytes, _) = writer.finish();
    (id, bytes.to_vec())
}

/// The 13-byte tree node of an empty item.
fn empty_node() -> Vec<u8> {
    TreeNode {
        level: 0,
        entries: vec![],
    }
    .encode()
}

/// A second pack: one raw frame holding the empty item's tree node.
fn empty_node_pack() -> (PackId, Vec<u8>) {
    let mut writer = PackWriter::new();
    writer.add_frame(build_frame(&[empty_node()]));
    let (id, bytes, _) = writer.finish();
    (id, bytes.to_vec())
}

/// A pack parsed as the README describes it, without the library.
fn spec_parse_pack(pack: &[u8]) -> (Vec<PackFrameVector>, Vec<PackBlobVector>, usize, usize) {
    assert_eq!(pack[..8], *b"CAIRNPK\x01");
    assert_eq!(pack[pack.len() - 8..], *b"CAIRNPKE");
    let footer = pack.len() - 44;
    let trailer_len = u32_at(pack, footer) as usize;
    let trailer_at = footer - trailer_len;
    let trailer = &pack[trailer_at..footer];
    assert_eq!(
        blake3::hash(trailer).as_bytes(),
        &pack[footer + 4..footer + 36]
    );
    assert_eq!(u64_at(trailer, 0), 0, "the nonce of an ordinary pack");
    let frame_count = u32_at(trailer, 8) as usize;
    let blob_count = u32_at(trailer, 12) as usize;
    assert_eq!(trailer.len(), 16 + 9 * frame_count + 36 * blob_count);
    let mut frames = Vec::new();
    let mut offset = 8u32;
    for i in 0..frame_count {
        let at = 16 + 9 * i;
        let stored_len = u32_at(trailer, at);
        frames.push(PackFrameVector {
            offset,
            stored_len,
            raw_len: 0,
            codec_byte: trailer[at + 4],
            blob_count: u32_at(trailer, at + 5),
        });
        offset += stored_len;
    }
    assert_eq!(
        offset as usize, trailer_at,
        "frames are contiguous up to the trailer"
    );
    let mut blobs = Vec::new();
    let mut at = 16 + 9 * frame_count;
    for (i, f) in frames.iter_mut().enumerate() {
        for _ in 0..f.blob_count {
            let len = u32_at(trailer, at + 32);
            blobs.push(PackBlobVector {
                id: hex::encode(&trailer[at..at + 32]),
                frame: i as u32,
                offset: f.raw_len,
                len,
            });
            f.raw_len += len;
            at += 36;
        }
    }
    (frames, blobs, trailer_at, trailer_len)
}

#[test]
fn pack_vectors() {
    let (id, bytes) = vector_pack();
    let (frames, blobs, trailer_at, trailer_len) = spec_parse_pack(&bytes);
    let footer_at = bytes.len() - FOOTER_LEN;
    let produced = PackVectors {
        description: lines(
            "One complete pack holding the two frames of blob.json; see README.md, \"Packs\".\n\
             `id` is BLAKE3 of all `len` bytes. Frame offsets and raw lengths and blob offsets are not\n\
             stored: a reader derives them (frames follow each other from offset 8; a frame's blobs\n\
             follow each other in its raw bytes). `trailer.blake3` is stored in the footer.",
        ),
        id: id.to_hex(),
        len: bytes.len() as u64,
        hex: hex::encode(&bytes),
        frames,
        blobs,
        trailer: TrailerVector {
            offset: trailer_at as u64,
            len: trailer_len as u32,
            blake3: blake3::hash(&bytes[trailer_at..footer_at])
                .to_hex()
                .to_string(),
            hex: hex::encode(&bytes[trailer_at..footer_at]),
        },
        footer: FooterVector {
            offset: footer_at as u64,
            trailer_len: trailer_len as u32,
            trailer_hash: hex::encode(&bytes[footer_at + 4..footer_at + 36]),
            end_magic_hex: hex::encode(PACK_END_MAGIC),
            hex: hex::encode(&bytes[footer_at..]),
        },
    };
    let stored = settle("pack.json", &produced);

    let bytes = unhex(&stored.hex);
    let id = PackId::from_hex(&stored.id).unwrap();
    assert_eq!(PackId::of(&bytes), id);
    assert_eq!(bytes.len() as u64, stored.len);
    assert_eq!(bytes[..8], PACK_MAGIC);
    // The library's reader.
    let trailer = decode_pack(&bytes, id).unwrap();
    let frames: Vec<PackFrameVector> = trailer
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| PackFrameVector {
            offset: f.offset,
            stored_len: f.stored_len,
            raw_len: f.raw_len,
            codec_byte: f.codec as u8,
            blob_count: trailer
                .blobs
                .iter()
                .filter(|b| b.frame as usize == i)
                .count() as u32,
        })
        .collect();
    assert_eq!(frames, stored.frames);
    let blobs: Vec<PackBlobVector> = trailer
        .blobs
        .iter()
        .map(|b| PackBlobVector {
            id: b.id.to_hex(),
            frame: b.frame,
            offset: b.offset,
            len: b.len,
        })
        .collect();
    assert_eq!(blobs, stored.blobs);
    // The README's reading of it.
    let (spec_frames, spec_blobs, trailer_at, trailer_len) = spec_parse_pack(&bytes);
    assert_eq!(spec_frames, stored.frames);
    assert_eq!(spec_blobs, stored.blobs);
    assert_eq!(trailer_at as u64, stored.trailer.offset);
    assert_eq!(trailer_len as u32, stored.trailer.len);
    assert_eq!(
        hex::encode(&bytes[trailer_at..trailer_at + trailer_len]),
        stored.trailer.hex
    );
    assert_eq!(trailer.encode(), unhex(&stored.trailer.hex));
    // The footer, and a reader that has only the tail.
    let footer_bytes = &bytes[stored.footer.offset as usize..];
    assert_eq!(hex::encode(footer_bytes), stored.footer.hex);
    let footer = PackFooter::decode(footer_bytes, "p").unwrap();
    assert_eq!(footer.trailer_len, stored.footer.trailer_len);
    assert_eq!(hex::encode(footer.trailer_hash), stored.footer.trailer_hash);
    assert_eq!(stored.footer.trailer_hash, stored.trailer.blake3);
    assert_eq!(
        decode_trailer_from_tail(stored.len, footer_bytes, "p").unwrap(),
        None
    );
    let tail = &bytes[stored.trailer.offset as usize..];
    assert_eq!(
        decode_trailer_from_tail(stored.len, tail, "p").unwrap(),
        Some(trailer.clone())
    );
    // Every frame decodes to the blobs of blob.json.
    let blob_file: BlobVectors =
        serde_json::from_str(&std::fs::read_to_string(spec_dir().join("blob.json")).unwrap())
            .unwrap();
    for (f, vf) in trailer.frames.iter().zip(&blob_file.frames) {
        let stored_bytes = &bytes[f.offset as usize..(f.offset + f.stored_len) as usize];
        assert_eq!(hex::encode(stored_bytes), vf.stored_hex);
        assert_eq!(f.raw_len, vf.raw_len);
    }
    for (b, vb) in trailer
        .blobs
        .iter()
        .zip(blob_file.frames.iter().flat_map(|f| &f.blobs))
    {
        assert_eq!(b.id.to_hex(), vb.id);
        assert_eq!((b.offset, b.len), (vb.offset, vb.len));
    }
    // Damage to the magic, trailer or footer is caught even when the pack is
    // renamed to its new hash.
    for pos in (0..8).chain(trailer_at..bytes.len()) {
        let mut damaged = bytes.clone();
        damaged[pos] ^= 0x04;
        assert!(
            decode_pack(&damaged, PackId::of(&damaged)).is_err(),
            "flip at {pos} not detected"
        );
    }
}

// ---------------------------------------------------------------------------
// index.json

#[derive(Serialize, Deserialize)]
struct IndexVectors {
    description: Vec<String>,
    id: String,
    hex: String,
    packs: Vec<IndexedPackVector>,
}

#[derive(Serialize, Deserialize)]
struct IndexedPackVector {
    id: String,
    len: u64,
    trailer_len: u32,
    trailer_hex: String,
    /// The whole pack, for reference (an index object does not hold it).
    pack_hex: String,
}

fn indexed(id: PackId, bytes: &[u8]) -> IndexedPack {
    IndexedPack {
        id,
        len: bytes.len() as u64,
        trailer: decode_pack(bytes, id).unwrap(),
    }
}

#[test]
fn index_vectors() {
    let (a_id, a) = vector_pack();
    let (b_id, b) = empty_node_pack();
    let mut packs = [(a_id, a), (b_id, b)];
    // As a backup writes them: sorted by pack id.
    packs.sort_by_key(|(id, _)| *id);
    let entries: Vec<IndexedPack> = packs.iter().map(|(id, b)| indexed(*id, b)).collect();
    let bytes = encode_index(&entries, 0);
    let produced = IndexVectors {
        description: lines(
            "One index object naming two packs: the pack of pack.json and a pack holding one raw\n\
             frame with the empty item's tree node; see README.md, \"Index objects\". `id` is BLAKE3\n\
             of the object. Each entry copies its pack's trailer.",
        ),
        id: IndexId::of(&bytes).to_hex(),
        hex: hex::encode(&bytes),
        packs: packs
            .iter()
            .zip(&entries)
            .map(|((id, pack), e)| {
                let trailer = e.trailer.encode();
                IndexedPackVector {
                    id: id.to_hex(),
                    len: pack.len() as u64,
                    trailer_len: trailer.len() as u32,
                    trailer_hex: hex::encode(trailer),
                    pack_hex: hex::encode(pack),
                }
            })
            .collect(),
    };
    let stored = settle("index.json", &produced);

    let bytes = unhex(&stored.hex);
    let id = IndexId::from_hex(&stored.id).unwrap();
    assert_eq!(IndexId::of(&bytes), id);
    let decoded = decode_index(&bytes, id).unwrap();
    assert_eq!(decoded.len(), stored.packs.len());
    // The README's reading of it.
    assert_eq!(bytes[..8], *b"CAIRNIX\x01");
    assert_eq!(
        u64_at(&bytes, 8),
        0,
        "the nonce of an ordinary index object"
    );
    assert_eq!(u32_at(&bytes, 16) as usize, stored.packs.len());
    let mut at = 20;
    for (p, d) in stored.packs.iter().zip(&decoded) {
        assert_eq!(hex::encode(&bytes[at..at + 32]), p.id);
        assert_eq!(u64_at(&bytes, at + 32), p.len);
        assert_eq!(u32_at(&bytes, at + 40), p.trailer_len);
        let trailer = &bytes[at + 44..at + 44 + p.trailer_len as usize];
        assert_eq!(hex::encode(trailer), p.trailer_hex);
        at += 44 + p.trailer_len as usize;
        // The library agrees, and the copy is the pack's own trailer.
        assert_eq!(d.id.to_hex(), p.id);
        assert_eq!(d.len, p.len);
        assert_eq!(d.trailer.encode(), trailer);
        let pack = unhex(&p.pack_hex);
        assert_eq!(PackId::of(&pack), d.id);
        assert_eq!(pack.len() as u64, p.len);
        let end = pack.len() - FOOTER_LEN;
        assert_eq!(&pack[end - trailer.len()..end], trailer);
        assert_eq!(decode_pack(&pack, d.id).unwrap(), d.trailer);
    }
    assert_eq!(at, bytes.len());
    let pack_file: PackVectors =
        serde_json::from_str(&std::fs::read_to_string(spec_dir().join("pack.json")).unwrap())
            .unwrap();
    assert!(stored.packs.iter().any(|p| p.pack_hex == pack_file.hex));
    let empty = stored
        .packs
        .iter()
        .find(|p| p.pack_hex != pack_file.hex)
        .unwrap();
    let empty_trailer = &decoded
        .iter()
        .find(|d| d.id.to_hex() == empty.id)
        .unwrap()
        .trailer;
    assert_eq!(empty_trailer.frames[0].codec, Codec::Raw);
    assert_eq!(empty_trailer.blobs[0].id, BlobId::of(&empty_node()));
}

// ---------------------------------------------------------------------------
// tree.json

#[derive(Serialize, Deserialize)]
struct TreeVectors {
    description: Vec<String>,
    cases: Vec<TreeCase>,
}

#[derive(Serialize, Deserialize)]
struct TreeCase {
    name: String,
    params: TreeParams,
    chunks: Vec<EntryVector>,
    root: String,
    root_level: u8,
    content_len: u64,
    nodes: Vec<NodeVector>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct EntryVector {
    #[serde(with = "id_hex")]
    id: BlobId,
    len: u64,
}

mod id_hex {
    use cairn_store::id::BlobId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(id: &BlobId, s: S) -> Result<S::Ok, S::Error> {
        id.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BlobId, D::Error> {
        BlobId::deserialize(d)
    }
}

#[derive(Serialize, Deserialize)]
struct NodeVector {
    id: String,
    level: u8,
    entries: u32,
    content_len: u64,
    hex: String,
}

/// Synthetic chunk `i`: id BLAKE3(u64 LE i), length 1000 + i mod 7.
fn synthetic_chunk(i: u64) -> TreeEntry {
    TreeEntry {
        id: BlobId::of(&i.to_le_bytes()),
        len: 1000 + i % 7,
    }
}

fn group_word(id: &BlobId) -> u32 {
    u32::from_le_bytes(id.0[..4].try_into().unwrap())
}

fn tree_cases() -> Vec<(String, TreeParams, Vec<TreeEntry>)> {
    let small = TreeParams {
        avg_fanout: 4,
        min_fanout: 2,
        max_fanout: 4,
    };
    small.validate().unwrap();
    // A chunk that never ends a group under `small`, repeated: nodes end at max_fanout.
    let never = (0u64..)
        .map(synthetic_chunk)
        .find(|c| group_word(&c.id) % 4 != 3)
        .unwrap();
    vec![
        (
            "100 chunks, default params: three levels".into(),
            TREE,
            (0..100).map(synthetic_chunk).collect(),
        ),
        ("empty item: one empty level-0 node".into(), TREE, vec![]),
        (
            "one chunk: the root is a level-0 node with one entry".into(),
            TREE,
            vec![synthetic_chunk(0)],
        ),
        (
            "10 identical chunks that never end a group, max_fanout 4".into(),
            small,
            vec![never; 10],
        ),
    ]
}

/// The tree as the README states it, level by level.
fn spec_tree(params: &TreeParams, chunks: &[TreeEntry]) -> (BlobId, Vec<(BlobId, Vec<u8>)>) {
    let mut nodes = Vec::new();
    let mut entries: Vec<TreeEntry> = chunks.to_vec();
    let mut level = 0u8;
    loop {
        let mut groups: Vec<Vec<TreeEntry>> = Vec::new();
        let mut current = Vec::new();
        for e in &entries {
            current.push(*e);
            let n = current.len() as u32;
            if n >= params.max_fanout
                || (n >= params.min_fanout
                    && group_word(&e.id) % params.avg_fanout == params.avg_fanout - 1)
            {
                groups.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() || groups.is_empty() {
            groups.push(current);
        }
        let mut next = Vec::new();
        for g in groups {
            let mut bytes = TREE_MAGIC.to_vec();
            bytes.push(level);
            bytes.extend_from_slice(&(g.len() as u32).to_le_bytes());
            for e in &g {
                bytes.extend_from_slice(e.id.as_bytes());
                bytes.extend_from_slice(&e.len.to_le_bytes());
            }
            let id = BlobId::of(&bytes);
            next.push(TreeEntry {
                id,
                len: g.iter().map(|e| e.len).sum(),
            });
            nodes.push((id, bytes));
        }
        if next.len() == 1 {
            return (next[0].id, nodes);
        }
        entries = next;
        level += 1;
    }
}

fn flatten(root: BlobId, nodes: &[NodeVector]) -> Vec<TreeEntry> {
    let node = nodes.iter().find(|n| n.id == root.to_hex()).unwrap();
    let decoded = TreeNode::decode(&unhex(&node.hex), "t").unwrap();
    if decoded.level == 0 {
        return decoded.entries;
    }
    decoded
        .entries
        .iter()
        .flat_map(|e| {
            let child = nodes.iter().find(|n| n.id == e.id.to_hex()).unwrap();
            assert_eq!(child.level + 1, decoded.level);
            assert_eq!(child.content_len, e.len);
            flatten(e.id, nodes)
        })
        .collect()
}

#[test]
fn tree_vectors() {
    let produced = TreeVectors {
        description: lines(
            "Content trees of chunk lists; see README.md, \"Trees\". Chunk i of the synthetic lists\n\
             has id BLAKE3(u64 LE i) and length 1000 + (i mod 7). `nodes` are in the order the\n\
             reference writer emits them (it may emit the same node twice: identical groups);\n\
             `root` is the item's `tree`, `content_len` its `len`.",
        ),
        cases: tree_cases()
            .into_iter()
            .map(|(name, params, chunks)| {
                let (root, nodes) = build_tree(params, &chunks);
                let root_node = nodes.iter().find(|n| n.id == root).unwrap();
                let root_node = TreeNode::decode(&root_node.bytes, "t").unwrap();
                TreeCase {
                    name,
                    params,
                    chunks: chunks
                        .iter()
                        .map(|c| EntryVector {
                            id: c.id,
                            len: c.len,
                        })
                        .collect(),
                    root: root.to_hex(),
                    root_level: root_node.level,
                    content_len: root_node.content_len().unwrap(),
                    nodes: nodes
                        .iter()
                        .map(|n| {
                            let d = TreeNode::decode(&n.bytes, "t").unwrap();
                            NodeVector {
                                id: n.id.to_hex(),
                                level: d.level,
                                entries: d.entries.len() as u32,
                                content_len: d.content_len().unwrap(),
                                hex: hex::encode(&n.bytes),
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    };
    let stored = settle("tree.json", &produced);

    assert_eq!(stored.cases[0].root_level, 2);
    for case in &stored.cases {
        let chunks: Vec<TreeEntry> = case
            .chunks
            .iter()
            .map(|c| TreeEntry {
                id: c.id,
                len: c.len,
            })
            .collect();
        for n in &case.nodes {
            let bytes = unhex(&n.hex);
            assert_eq!(BlobId::of(&bytes).to_hex(), n.id);
            let d = TreeNode::decode(&bytes, "t").unwrap();
            assert_eq!(d.level, n.level);
            assert_eq!(d.entries.len() as u32, n.entries);
            assert_eq!(d.content_len(), Some(n.content_len));
            assert_eq!(d.encode(), bytes);
            assert_eq!(bytes.len(), 13 + 40 * d.entries.len());
        }
        let root = BlobId::from_hex(&case.root).unwrap();
        let flat = flatten(root, &case.nodes);
        assert_eq!(flat.len(), chunks.len(), "{}", case.name);
        assert!(
            flat.iter().zip(&chunks).all(|(a, b)| a == b),
            "{}",
            case.name
        );
        assert_eq!(case.content_len, chunks.iter().map(|c| c.len).sum::<u64>());
        // The README's statement of the rule gives the same nodes and root.
        let (spec_root, spec_nodes) = spec_tree(&case.params, &chunks);
        assert_eq!(spec_root, root, "{}", case.name);
        let mut a: Vec<String> = spec_nodes.iter().map(|(id, _)| id.to_hex()).collect();
        let mut b: Vec<String> = case.nodes.iter().map(|n| n.id.clone()).collect();
        a.sort();
        a.dedup();
        b.sort();
        b.dedup();
        assert_eq!(a, b, "{}", case.name);
        for (id, bytes) in &spec_nodes {
            let n = case.nodes.iter().find(|n| n.id == id.to_hex()).unwrap();
            assert_eq!(hex::encode(bytes), n.hex);
        }
    }
    // The empty item's root.
    assert_eq!(stored.cases[1].nodes[0].hex, hex::encode(empty_node()));
    assert_eq!(stored.cases[1].root, BlobId::of(&empty_node()).to_hex());
}

// ---------------------------------------------------------------------------
// manifest.json

#[derive(Serialize, Deserialize)]
struct ManifestVectors {
    description: Vec<String>,
    key_seed_hex: String,
    public_key: String,
    repository: String,
    signature_domain_hex: String,
    body: Manifest,
    body_text: String,
    signed_message_hex: String,
    signature_hex: String,
    snapshot_id: String,
    object_hex: String,
    layout: ManifestLayout,
}

#[derive(Serialize, Deserialize)]
struct ManifestLayout {
    len: u32,
    magic_hex: String,
    body_len: u32,
    body_offset: u32,
    public_key_offset: u32,
    signature_offset: u32,
}

fn vector_manifest() -> Manifest {
    let cases = tree_cases();
    let (root, _) = build_tree(cases[0].1, &cases[0].2);
    let len: u64 = cases[0].2.iter().map(|c| c.len).sum();
    let (empty_root, _) = build_tree(cases[1].1, &cases[1].2);
    let policy = POLICY;
    let mtime: jiff::Timestamp = "2024-12-31T23:59:58.5Z".parse().unwrap();
    Manifest {
        version: 1,
        repository: RepoId(REPO_ID),
        time: "2025-01-02T03:04:05.123456789Z".parse().unwrap(),
        host: "node4".into(),
        tags: vec!["nightly".into(), "pg".into()],
        source: SourceInfo {
            kind: SourceKind::Command,
            command: Some("pg_dump app".into()),
            exit_status: Some(0),
            url: None,
        },
        paths: vec![],
        started: None,
        parent: None,
        root: None,
        totals: None,
        items: vec![
            Item {
                name: "db".into(),
                kind: ItemKind::Dir,
                len: 0,
                tree: None,
                chunks: None,
                chunker: None,
                mode: Some(0o755),
                mtime: Some(mtime),
                target: None,
                one_chunk: false,
            },
            Item {
                name: "db/app.sql".into(),
                kind: ItemKind::File,
                len,
                tree: Some(root),
                chunks: Some(cases[0].2.len() as u64),
                chunker: Some(policy.params(policy.min_avg_len)),
                mode: Some(0o644),
                mtime: Some(mtime),
                target: None,
                one_chunk: false,
            },
            Item {
                name: "db/empty".into(),
                kind: ItemKind::File,
                len: 0,
                tree: Some(empty_root),
                chunks: Some(0),
                chunker: Some(policy.params(policy.max_avg_len)),
                mode: None,
                mtime: None,
                target: None,
                one_chunk: false,
            },
            Item {
                name: "db/latest".into(),
                kind: ItemKind::Symlink,
                len: 0,
                tree: None,
                chunks: None,
                chunker: None,
                mode: Some(0o777),
                mtime: None,
                target: Some("app.sql".into()),
                one_chunk: false,
            },
        ],
    }
}

/// The vector of a signed `manifest`: its object, layout and signature.
fn manifest_vector(manifest: Manifest, description: &str) -> ManifestVectors {
    let (id, object) = manifest.encode_signed(&key()).unwrap();
    let body_len = u32_at(&object, 8) as usize;
    let body = &object[12..12 + body_len];
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(&REPO_ID);
    message.extend_from_slice(body);
    ManifestVectors {
        description: lines(description),
        key_seed_hex: hex::encode(KEY_SEED),
        public_key: key().public().to_string(),
        repository: RepoId(REPO_ID).to_hex(),
        signature_domain_hex: hex::encode(SIGNATURE_DOMAIN),
        body: manifest,
        body_text: String::from_utf8(body.to_vec()).unwrap(),
        signed_message_hex: hex::encode(&message),
        signature_hex: hex::encode(&object[object.len() - 64..]),
        snapshot_id: id.to_hex(),
        object_hex: hex::encode(&object),
        layout: ManifestLayout {
            len: object.len() as u32,
            magic_hex: hex::encode(MANIFEST_MAGIC),
            body_len: body_len as u32,
            body_offset: 12,
            public_key_offset: (12 + body_len) as u32,
            signature_offset: (12 + body_len + 32) as u32,
        },
    }
}

#[test]
fn manifest_vectors() {
    let produced = manifest_vector(
        vector_manifest(),
        "One snapshot manifest signed with the ed25519 key whose 32-byte seed is `key_seed_hex`,\n\
             for the repository `repository`; see README.md, \"Snapshot manifests\". `body` is the\n\
             JSON body pretty-printed for reading; `body_text` is its exact stored bytes (compact).\n\
             signed message = signature domain | repository id | body; the signature is RFC 8032\n\
             Ed25519 (deterministic) and must pass `verify_strict`. `snapshot_id` is BLAKE3 of the\n\
             whole object. The file item's tree is the first case of tree.json, the empty file's the\n\
             second.",
    );
    let stored = settle("manifest.json", &produced);

    let object = unhex(&stored.object_hex);
    let id = SnapshotId::from_hex(&stored.snapshot_id).unwrap();
    let repo = RepoId::from_hex(&stored.repository).unwrap();
    let public: PublicKey = stored.public_key.parse().unwrap();
    let seed: [u8; 32] = unhex(&stored.key_seed_hex).try_into().unwrap();
    assert_eq!(SecretKey::from_seed(&seed).public(), public);
    assert_eq!(SnapshotId::of(&object), id);
    // The README's reading of the framing.
    let l = &stored.layout;
    assert_eq!(object.len() as u32, l.len);
    assert_eq!(hex::encode(&object[..8]), l.magic_hex);
    assert_eq!(&object[..8], b"CAIRNSN\x01");
    assert_eq!(u32_at(&object, 8), l.body_len);
    assert_eq!(l.len, 12 + l.body_len + 32 + 64);
    let body = &object[l.body_offset as usize..l.public_key_offset as usize];
    assert_eq!(body, stored.body_text.as_bytes());
    assert_eq!(
        &object[l.public_key_offset as usize..l.signature_offset as usize],
        public.as_bytes()
    );
    let signature: [u8; 64] = object[l.signature_offset as usize..].try_into().unwrap();
    assert_eq!(hex::encode(signature), stored.signature_hex);
    let mut message = unhex(&stored.signature_domain_hex);
    assert_eq!(message, b"cairn snapshot v1\0");
    message.extend_from_slice(repo.as_bytes());
    message.extend_from_slice(body);
    assert_eq!(hex::encode(&message), stored.signed_message_hex);
    assert!(public.verify_strict(&message, &signature));
    // The library's reader.
    let snapshot = decode_manifest(&object, id, &repo, &Trust::Keys(vec![public])).unwrap();
    assert_eq!(snapshot.signer, public);
    assert_eq!(snapshot.manifest, stored.body);
    let parsed: Manifest = serde_json::from_str(&stored.body_text).unwrap();
    assert_eq!(parsed, stored.body);
    // The items refer to tree.json's roots.
    let trees: TreeVectors =
        serde_json::from_str(&std::fs::read_to_string(spec_dir().join("tree.json")).unwrap())
            .unwrap();
    let file = snapshot.manifest.item("db/app.sql").unwrap();
    assert_eq!(file.tree.unwrap().to_hex(), trees.cases[0].root);
    assert_eq!(file.len, trees.cases[0].content_len);
    let empty = snapshot.manifest.item("db/empty").unwrap();
    assert_eq!(empty.tree.unwrap().to_hex(), trees.cases[1].root);
    // What a reader refuses.
    let wrong_repo = RepoId([0x03; 32]);
    let err = decode_manifest(&object, id, &wrong_repo, &Trust::AnyValidSignature).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature);
    let stranger = SecretKey::from_seed(&[0x05; 32]).public();
    let err = decode_manifest(&object, id, &repo, &Trust::Keys(vec![stranger])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature);
    let mut tampered = object.clone();
    let at = l.body_offset as usize + stored.body_text.find("node4").unwrap() + 4;
    tampered[at] = b'5';
    let err = decode_manifest(
        &tampered,
        SnapshotId::of(&tampered),
        &repo,
        &Trust::AnyValidSignature,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature);
    let err = decode_manifest(&tampered, id, &repo, &Trust::AnyValidSignature).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    // A non-canonical signature scalar (s + L) is refused by verify_strict.
    let mut malleated = signature;
    add_group_order(&mut malleated[32..]);
    assert!(!public.verify_strict(&message, &malleated));
}

/// Adds the ed25519 group order L to a 32-byte little-endian scalar.
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10,
    ];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
}

// ---------------------------------------------------------------------------
// config.json and key.json

#[derive(Serialize, Deserialize)]
struct ConfigVectors {
    description: Vec<String>,
    /// The exact bytes of the `config` object.
    text: String,
    /// The same, as an object.
    config: Config,
}

#[test]
fn config_vectors() {
    let config = vector_config();
    let produced = ConfigVectors {
        description: lines(
            "The repository config of the vectors and of fixture-repo-v1: fixed parameters (those\n\
             of store/tests/vectors.rs, not whatever the defaults are now), repository id 32 bytes of\n\
             0x02, one trusted key (key.json's). `text` is the exact object stored at the key `config`\n\
             (pretty JSON, two-space indent, trailing newline); see README.md, \"Config\".",
        ),
        text: String::from_utf8(config.encode()).unwrap(),
        config,
    };
    let stored = settle("config.json", &produced);

    let decoded = Config::decode(stored.text.as_bytes()).unwrap();
    assert_eq!(decoded, stored.config);
    assert_eq!(decoded.encode(), stored.text.as_bytes());
    assert_eq!(decoded.id, RepoId(REPO_ID));
    assert!(matches!(decoded.trust(), Trust::Keys(k) if k == vec![key().public()]));
    // A newer version is refused as unsupported, not as damage.
    let newer = stored.text.replace("\"version\": 1", "\"version\": 2");
    assert_eq!(
        Config::decode(newer.as_bytes()).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    // Unknown top-level fields are refused.
    let extra = stored.text.replacen('{', "{\n  \"extra\": 1,", 1);
    assert_eq!(
        Config::decode(extra.as_bytes()).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
}

#[derive(Serialize, Deserialize)]
struct KeyVectors {
    description: Vec<String>,
    seed_hex: String,
    file_text: String,
    public_key_text: String,
    public_key_hex: String,
    accepted_public_key_forms: Vec<String>,
    rejected_public_key_forms: Vec<String>,
}

#[test]
fn key_vectors() {
    let key = key();
    let public = key.public();
    let hex_part = hex::encode(public.as_bytes());
    let produced = KeyVectors {
        description: lines(
            "The secret key file for the seed `seed_hex` (32 bytes of 0x01) and its public key text;\n\
             see README.md, \"Keys\". A reader accepts every form in `accepted_public_key_forms` as this\n\
             key and refuses every one in `rejected_public_key_forms`.",
        ),
        seed_hex: hex::encode(KEY_SEED),
        file_text: key.encode_file(),
        public_key_text: public.to_string(),
        public_key_hex: hex_part.clone(),
        accepted_public_key_forms: vec![
            format!("ed25519:{hex_part}"),
            hex_part.clone(),
            format!("  ed25519:{hex_part}\n"),
            format!("ed25519:{}", hex_part.to_uppercase()),
        ],
        rejected_public_key_forms: vec![
            format!("ed25519:{}", &hex_part[..62]),
            format!("ed25519:{hex_part}00"),
            format!("ssh-ed25519:{hex_part}"),
            format!("ed25519:{}", "zz".repeat(32)),
        ],
    };
    let stored = settle("key.json", &produced);

    let seed: [u8; 32] = unhex(&stored.seed_hex).try_into().unwrap();
    let decoded = SecretKey::decode_file(&stored.file_text, Path::new("key.json")).unwrap();
    assert_eq!(decoded.public(), SecretKey::from_seed(&seed).public());
    assert_eq!(decoded.public().to_string(), stored.public_key_text);
    assert_eq!(
        hex::encode(decoded.public().as_bytes()),
        stored.public_key_hex
    );
    assert_eq!(
        stored.public_key_text,
        format!("ed25519:{}", stored.public_key_hex)
    );
    let file: Value = serde_json::from_str(&stored.file_text).unwrap();
    assert_eq!(file["kind"], "cairn-secret-key");
    assert_eq!(file["version"], 1);
    assert_eq!(file["algorithm"], "ed25519");
    assert_eq!(file["secret"], stored.seed_hex);
    assert_eq!(file["public"], stored.public_key_text);
    for form in &stored.accepted_public_key_forms {
        assert_eq!(
            form.parse::<PublicKey>().unwrap(),
            decoded.public(),
            "{form:?}"
        );
    }
    for form in &stored.rejected_public_key_forms {
        assert!(form.parse::<PublicKey>().is_err(), "{form:?}");
    }
    // A file whose public key does not match its secret is refused.
    let damaged = stored.file_text.replacen(
        &format!("\"secret\": \"{}", &stored.seed_hex[..2]),
        "\"secret\": \"02",
        1,
    );
    assert_eq!(
        SecretKey::decode_file(&damaged, Path::new("k"))
            .unwrap_err()
            .kind(),
        ErrorKind::Key
    );
}

// ---------------------------------------------------------------------------
// The fixture repository.

const FIXTURE: &str = "fixture-repo-v1";

#[derive(Serialize, Deserialize)]
struct FixtureExpectations {
    description: Vec<String>,
    repository: String,
    public_key: String,
    snapshots: Vec<FixtureSnapshot>,
    objects: Vec<FixtureObject>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct FixtureSnapshot {
    id: String,
    time: jiff::Timestamp,
    items: Vec<FixtureItem>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct FixtureItem {
    name: String,
    kind: ItemKind,
    len: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct FixtureObject {
    key: String,
    len: u64,
    blake3: String,
}

/// The fixture's contents, by item name and snapshot number (1-based).
fn fixture_content(snapshot: usize, name: &str) -> Vec<u8> {
    let notes_v1 = || -> Vec<u8> {
        xof("cairn fixture v1 notes", 6144)
            .iter()
            .map(|&b| match b {
                0..40 => b' ',
                40..48 => b'\n',
                _ => b'a' + b % 26,
            })
            .collect()
    };
    let notes_v2 = || {
        let mut v = notes_v1();
        v.splice(
            3000..3000,
            b"EDITED in the second version\n".iter().copied(),
        );
        v
    };
    match (snapshot, name) {
        (1, "notes.txt") => notes_v1(),
        (3, "notes.txt") | (2, "site/notes.txt") => notes_v2(),
        (2, "site/empty") => Vec::new(),
        (2, "site/bin.dat") => {
            let b = xof("cairn fixture v1 binary", 3000);
            assert!(b.contains(&0));
            b
        }
        (2, "site/sub/small.txt") => b"hello, cairn\n".to_vec(),
        _ => panic!("no content for {name} in snapshot {snapshot}"),
    }
}

fn fixture_time(snapshot: usize) -> jiff::Timestamp {
    format!("2025-01-01T0{snapshot}:00:00Z").parse().unwrap()
}

/// Every file under `dir`, as (relative path with `/`, bytes), sorted.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap().to_str().unwrap();
                out.push((rel.replace('\\', "/"), std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in files_under(from) {
        let path = to.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn open_backend(path: &Path) -> Backend {
    Backend::connect(path.to_str().unwrap(), &BackendOptions::default(), false).unwrap()
}

/// Writes the fixture repository (only ever once: see the module docs).
async fn create_fixture(dir: &Path) {
    use cairn_store::ops::backup::{BackupOptions, NoProgress};
    use cairn_store::ops::source::Source;
    use cairn_store::repo::Repository;
    let backend =
        Backend::connect(dir.to_str().unwrap(), &BackendOptions::default(), true).unwrap();
    Repository::init_with_config(backend.clone(), vector_config())
        .await
        .unwrap();
    let options = |n: usize| BackupOptions {
        host: "fixture".into(),
        tags: vec![format!("v1-{n}")],
        time: Some(fixture_time(n)),
        upload_concurrency: 1,
        ..BackupOptions::default()
    };
    let backup = |n: usize, source: Source| {
        let backend = backend.clone();
        async move {
            let session = Repository::open(backend)
                .await
                .unwrap()
                .begin_write(&cairn_store::ops::session::WriteOptions::default())
                .await
                .unwrap();
            let summary = session
                .backup(source, &key(), &options(n), Arc::new(NoProgress))
                .await
                .unwrap();
            session.finish().await.unwrap();
            summary
        }
    };
    // 1: one item read from a stream.
    backup(
        1,
        Source::Reader {
            name: "notes.txt".into(),
            reader: Box::new(std::io::Cursor::new(fixture_content(1, "notes.txt"))),
        },
    )
    .await;
    // 2: a directory tree: files, an empty file, binary data, a symlink.
    let src = tempfile::tempdir().unwrap();
    let site = src.path().join("site");
    std::fs::create_dir_all(site.join("sub")).unwrap();
    let mtime =
        std::time::SystemTime::from("2024-12-31T12:00:00Z".parse::<jiff::Timestamp>().unwrap());
    for name in [
        "site/notes.txt",
        "site/empty",
        "site/bin.dat",
        "site/sub/small.txt",
    ] {
        let path = src.path().join(name);
        std::fs::write(&path, fixture_content(2, name)).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        f.set_modified(mtime).unwrap();
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink("../notes.txt", site.join("sub/link")).unwrap();
    for d in [site.join("sub"), site.clone()] {
        let f = std::fs::File::open(&d).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        f.set_modified(mtime).unwrap();
    }
    backup(2, Source::Paths(vec![site])).await;
    // 3: the first item again, edited: same chunk parameters, new chunks only
    // where it changed (here none: snapshot 2 stored them), so no pack at all.
    backup(
        3,
        Source::Reader {
            name: "notes.txt".into(),
            reader: Box::new(std::io::Cursor::new(fixture_content(3, "notes.txt"))),
        },
    )
    .await;
    let _ = std::fs::remove_dir(dir.join("probe"));
}

/// What the fixture holds, read back from it.
async fn describe_fixture(dir: &Path) -> FixtureExpectations {
    use cairn_store::repo::Repository;
    let repo = Repository::open(open_backend(dir)).await.unwrap();
    let list = repo
        .load_snapshots(&Trust::Keys(vec![key().public()]))
        .await
        .unwrap();
    assert!(list.rejected.is_empty(), "{:?}", list.rejected);
    FixtureExpectations {
        description: lines(
            "What fixture-repo-v1/ holds: a repository written by Cairn v1 (format v1) with\n\
             config.json's config and key.json's key. Every later version must open it read-only,\n\
             verify it clean (signatures, and every byte with read-data) and restore it byte for\n\
             byte. `objects` lists every file of the directory with its BLAKE3, so any change to\n\
             it is noticed; it must never be regenerated. Item contents are regenerated by\n\
             store/tests/vectors.rs (fixture_content) and checked against `content_blake3`.",
        ),
        repository: repo.config().id.to_hex(),
        public_key: key().public().to_string(),
        snapshots: list
            .snapshots
            .iter()
            .map(|s| FixtureSnapshot {
                id: s.id.to_hex(),
                time: s.manifest.time,
                items: s
                    .manifest
                    .items
                    .iter()
                    .map(|i| FixtureItem {
                        name: i.name.clone(),
                        kind: i.kind,
                        len: i.len,
                        content_blake3: None,
                        chunks: i.chunks,
                        target: i.target.clone(),
                    })
                    .collect(),
            })
            .collect(),
        objects: files_under(dir)
            .into_iter()
            .map(|(key, bytes)| FixtureObject {
                key,
                len: bytes.len() as u64,
                blake3: BlobId::of(&bytes).to_hex(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_repository_v1_still_reads() {
    use cairn_store::ops::restore::NoRestoreProgress;
    use cairn_store::ops::verify::{ReadData, VerifyOptions};
    use cairn_store::repo::Repository;

    let fixture = spec_dir().join(FIXTURE);
    let expectations_path = spec_dir().join(format!("{FIXTURE}.json"));
    if !fixture.exists() {
        assert!(
            regenerating(),
            "{} is missing: it must be restored from git, not regenerated",
            fixture.display()
        );
        create_fixture(&fixture).await;
        let mut described = describe_fixture(&fixture).await;
        for (n, s) in described.snapshots.iter_mut().enumerate() {
            for item in &mut s.items {
                if item.kind == ItemKind::File {
                    let content = fixture_content(n + 1, &item.name);
                    item.content_blake3 = Some(BlobId::of(&content).to_hex());
                }
            }
        }
        std::fs::write(&expectations_path, to_text(&described)).unwrap();
    }
    let expected: FixtureExpectations =
        serde_json::from_str(&std::fs::read_to_string(&expectations_path).unwrap()).unwrap();

    // Nothing in the fixture changed.
    let now = files_under(&fixture);
    let objects: Vec<FixtureObject> = now
        .iter()
        .map(|(key, bytes)| FixtureObject {
            key: key.clone(),
            len: bytes.len() as u64,
            blake3: BlobId::of(bytes).to_hex(),
        })
        .collect();
    assert_eq!(objects, expected.objects, "{FIXTURE} was modified");
    // Its config is config.json's.
    let config: ConfigVectors =
        serde_json::from_str(&std::fs::read_to_string(spec_dir().join("config.json")).unwrap())
            .unwrap();
    let stored_config = now.iter().find(|(k, _)| k == "config").unwrap();
    assert_eq!(stored_config.1, config.text.as_bytes());

    // Work on a copy: the local backend needs a real directory, and nothing
    // may ever write into the fixture.
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("repo");
    copy_dir(&fixture, &copy);
    let public: PublicKey = expected.public_key.parse().unwrap();
    let trust = Trust::Keys(vec![public]);
    let repo = Repository::open(open_backend(&copy)).await.unwrap();
    assert_eq!(repo.config().id.to_hex(), expected.repository);
    let list = repo.load_snapshots(&trust).await.unwrap();
    assert!(list.rejected.is_empty(), "{:?}", list.rejected);
    assert_eq!(list.snapshots.len(), expected.snapshots.len());
    for (s, e) in list.snapshots.iter().zip(&expected.snapshots) {
        assert_eq!(s.id.to_hex(), e.id);
        assert_eq!(s.signer, public);
        assert_eq!(s.manifest.time, e.time);
        let names: Vec<&str> = s.manifest.items.iter().map(|i| i.name.as_str()).collect();
        let expected_names: Vec<&str> = e.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, expected_names);
    }

    // Verify reads every byte and finds nothing wrong.
    let report = repo
        .verify(
            &trust,
            &VerifyOptions {
                read_data: ReadData::All,
                concurrency: 2,
            },
        )
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.snapshots_intact, expected.snapshots.len() as u64);
    assert_eq!(report.unindexed_packs, 0);
    assert_eq!(report.packs_read, report.packs);

    // Restore every snapshot and compare byte for byte.
    let indexed = repo.clone().load_index().await.unwrap();
    for (n, (s, e)) in list.snapshots.iter().zip(&expected.snapshots).enumerate() {
        let target = scratch.path().join(format!("restore-{n}"));
        indexed
            .restore_to_dir(s, &target, None, &NoRestoreProgress)
            .await
            .unwrap();
        for (item, want) in s.manifest.items.iter().zip(&e.items) {
            let path = target.join(&item.name);
            assert_eq!(item.kind, want.kind);
            assert_eq!(item.len, want.len);
            match item.kind {
                ItemKind::File => {
                    let got = std::fs::read(&path).unwrap();
                    assert_eq!(
                        BlobId::of(&got).to_hex(),
                        *want.content_blake3.as_ref().unwrap(),
                        "{}",
                        item.name
                    );
                    assert!(got == fixture_content(n + 1, &item.name), "{}", item.name);
                    if let Some(mtime) = item.mtime {
                        let t = std::fs::metadata(&path).unwrap().modified().unwrap();
                        assert_eq!(t, std::time::SystemTime::from(mtime));
                    }
                    #[cfg(unix)]
                    if let Some(mode) = item.mode {
                        use std::os::unix::fs::PermissionsExt;
                        let m = std::fs::metadata(&path).unwrap().permissions().mode();
                        assert_eq!(m & 0o7777, mode);
                    }
                }
                ItemKind::Dir => assert!(path.is_dir(), "{}", item.name),
                ItemKind::Symlink => {
                    #[cfg(unix)]
                    assert_eq!(
                        std::fs::read_link(&path).unwrap().to_str(),
                        want.target.as_deref()
                    );
                }
            }
        }
    }
    // The third snapshot cut its item as the first did (sticky parameters)
    // and stored nothing new.
    let first = list.snapshots[0].manifest.item("notes.txt").unwrap();
    let third = list.snapshots[2].manifest.item("notes.txt").unwrap();
    assert_eq!(first.chunker, third.chunker);
    let index_objects = expected
        .objects
        .iter()
        .filter(|o| o.key.starts_with("index/"))
        .count();
    assert_eq!(index_objects, 2);
}

// ---------------------------------------------------------------- dir.json

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct DirVectors {
    description: Vec<String>,
    cases: Vec<DirCase>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct DirCase {
    name: String,
    entries: Vec<EntryJson>,
    root: String,
    /// In the order the reference writer emits them.
    nodes: Vec<DirNodeJson>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct DirNodeJson {
    id: String,
    level: u8,
    count: u32,
    hex: String,
}

/// A directory entry as JSON: byte strings in hex, optional fields null.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct EntryJson {
    name_hex: String,
    kind: u8,
    mode: Option<u32>,
    owner: Option<(u32, u32, String, String)>,
    mtime: Option<(i64, u32)>,
    change: Option<(i64, u32, u64)>,
    size: u64,
    link_group: Option<u64>,
    sparse: bool,
    one_chunk: bool,
    /// File: [root, chunks, min, avg, max, normalization]; directory: [tree];
    /// symlink: [target hex]; device: [rdev]; FIFO: [].
    node: Vec<Value>,
    xattrs: Vec<(String, String)>,
}

fn entry_json(e: &cairn_store::format::dir::DirEntry) -> EntryJson {
    use cairn_store::format::dir::Node;
    let node = match &e.node {
        Node::File {
            root,
            chunks,
            chunker,
        } => vec![
            root.to_hex().into(),
            (*chunks).into(),
            chunker.min_len.into(),
            chunker.avg_len.into(),
            chunker.max_len.into(),
            chunker.normalization.into(),
        ],
        Node::Dir { tree } => vec![tree.to_hex().into()],
        Node::Symlink { target } => vec![hex::encode(target).into()],
        Node::Fifo => vec![],
        Node::CharDevice { rdev } | Node::BlockDevice { rdev } => vec![(*rdev).into()],
    };
    EntryJson {
        name_hex: hex::encode(&e.name),
        kind: e.node.kind() as u8,
        mode: e.mode,
        owner: e.owner.as_ref().map(|o| {
            (
                o.uid,
                o.gid,
                String::from_utf8(o.user.clone()).unwrap(),
                String::from_utf8(o.group.clone()).unwrap(),
            )
        }),
        mtime: e.mtime.map(|t| (t.secs, t.nanos)),
        change: e.change.map(|c| (c.ctime.secs, c.ctime.nanos, c.inode)),
        size: e.size,
        link_group: e.link_group,
        sparse: e.sparse,
        one_chunk: e.one_chunk,
        node,
        xattrs: e
            .xattrs
            .iter()
            .map(|x| {
                (
                    String::from_utf8(x.name.clone()).unwrap(),
                    hex::encode(&x.value),
                )
            })
            .collect(),
    }
}

fn entry_of_json(j: &EntryJson) -> cairn_store::format::dir::DirEntry {
    use cairn_store::format::dir::{Change, DirEntry, Node, Owner, Time, Xattr};
    let id = |v: &Value| BlobId::from_hex(v.as_str().unwrap()).unwrap();
    let n = |v: &Value| v.as_u64().unwrap();
    let node = match j.kind {
        0 => Node::File {
            root: id(&j.node[0]),
            chunks: n(&j.node[1]),
            chunker: ChunkerParams {
                algorithm: ChunkerAlgorithm::FastCdc2020,
                min_len: n(&j.node[2]) as u32,
                avg_len: n(&j.node[3]) as u32,
                max_len: n(&j.node[4]) as u32,
                normalization: n(&j.node[5]) as u8,
            },
        },
        1 => Node::Dir {
            tree: id(&j.node[0]),
        },
        2 => Node::Symlink {
            target: unhex(j.node[0].as_str().unwrap()),
        },
        3 => Node::Fifo,
        4 => Node::CharDevice {
            rdev: n(&j.node[0]),
        },
        _ => Node::BlockDevice {
            rdev: n(&j.node[0]),
        },
    };
    DirEntry {
        name: unhex(&j.name_hex),
        node,
        mode: j.mode,
        owner: j.owner.as_ref().map(|(uid, gid, user, group)| Owner {
            uid: *uid,
            gid: *gid,
            user: user.as_bytes().to_vec(),
            group: group.as_bytes().to_vec(),
        }),
        mtime: j.mtime.map(|(secs, nanos)| Time { secs, nanos }),
        change: j.change.map(|(secs, nanos, inode)| Change {
            ctime: Time { secs, nanos },
            inode,
        }),
        size: j.size,
        link_group: j.link_group,
        sparse: j.sparse,
        one_chunk: j.one_chunk,
        xattrs: j
            .xattrs
            .iter()
            .map(|(name, value)| Xattr {
                name: name.as_bytes().to_vec(),
                value: unhex(value),
            })
            .collect(),
    }
}

fn dir_case(name: &str, entries: Vec<cairn_store::format::dir::DirEntry>) -> DirCase {
    use cairn_store::format::dir::{DirNode, build_dir};
    let (root, nodes) = build_dir(&entries).unwrap();
    DirCase {
        name: name.into(),
        entries: entries.iter().map(entry_json).collect(),
        root: root.to_hex(),
        nodes: nodes
            .iter()
            .map(|n| {
                let d = DirNode::decode(&n.bytes, "d").unwrap();
                DirNodeJson {
                    id: n.id.to_hex(),
                    level: d.level(),
                    count: match &d {
                        DirNode::Entries(e) => e.len() as u32,
                        DirNode::Children { children, .. } => children.len() as u32,
                    },
                    hex: hex::encode(&n.bytes),
                }
            })
            .collect(),
    }
}

fn sample_entries() -> Vec<cairn_store::format::dir::DirEntry> {
    use cairn_store::format::dir::{Change, DirEntry, Node, Owner, Time, Xattr};
    let file = DirEntry {
        mode: Some(0o640),
        owner: Some(Owner {
            uid: 999,
            gid: 999,
            user: b"edxapp".to_vec(),
            group: b"edxapp".to_vec(),
        }),
        mtime: Some(Time {
            secs: 1_764_547_200,
            nanos: 123_456_789,
        }),
        change: Some(Change {
            ctime: Time {
                secs: 1_764_547_201,
                nanos: 5,
            },
            inode: 4242,
        }),
        size: 5,
        link_group: Some(0x0102_0304_0506_0708),
        sparse: true,
        one_chunk: true,
        xattrs: vec![
            Xattr {
                name: b"system.posix_acl_access".to_vec(),
                value: vec![2, 0, 0, 0, 1, 0, 6, 0],
            },
            Xattr {
                name: b"user.comment".to_vec(),
                value: b"kept".to_vec(),
            },
        ],
        ..DirEntry::bare(
            "a.html",
            Node::File {
                root: BlobId::of(b"chunk list"),
                chunks: 1,
                chunker: ChunkerParams::DEFAULT,
            },
        )
    };
    vec![
        file,
        DirEntry::bare(b"b\xff".to_vec(), Node::BlockDevice { rdev: 0x0801 }),
        DirEntry::bare("null", Node::CharDevice { rdev: 0x0103 }),
        DirEntry {
            mode: Some(0o2775),
            ..DirEntry::bare("pipe", Node::Fifo)
        },
        DirEntry {
            mode: Some(0o1777),
            ..DirEntry::bare(
                "tmp",
                Node::Dir {
                    tree: BlobId::of(b"subtree"),
                },
            )
        },
        DirEntry {
            mtime: Some(Time {
                secs: -1,
                nanos: 999_999_999,
            }),
            ..DirEntry::bare(
                "up",
                Node::Symlink {
                    target: b"../etc".to_vec(),
                },
            )
        },
    ]
}

/// The smallest directory of bare files `f00000`, `f00001`, … that the
/// reference writer splits.
fn split_entries() -> Vec<cairn_store::format::dir::DirEntry> {
    use cairn_store::format::dir::{DirEntry, Node, build_dir};
    let entry = |i: u64| DirEntry {
        size: i,
        ..DirEntry::bare(
            format!("f{i:05}"),
            Node::File {
                root: BlobId::of(&i.to_le_bytes()),
                chunks: 1,
                chunker: ChunkerParams::DEFAULT,
            },
        )
    };
    let mut entries = Vec::new();
    for i in 0..20_000 {
        entries.push(entry(i));
        if i >= 128 && build_dir(&entries).unwrap().1.len() > 1 {
            return entries;
        }
    }
    panic!("no split in 20000 entries")
}

#[test]
fn directory_nodes_match_their_vectors_both_ways() {
    use cairn_store::format::dir::DirNode;
    let produced = DirVectors {
        description: vec![
            "Directory nodes (format v2); see README.md §10.2. Each case lists a directory's"
                .into(),
            "entries (byte strings in hex; `node` per kind: file [chunk-list root, chunks, min,"
                .into(),
            "avg, max, normalization], directory [tree], symlink [target hex], device [rdev],"
                .into(),
            "FIFO []), and the nodes the reference writer emits for it, root last.".into(),
        ],
        cases: vec![
            dir_case("the empty directory", vec![]),
            dir_case("every kind and every optional field", sample_entries()),
            dir_case(
                "the smallest directory of bare files the writer splits",
                split_entries(),
            ),
        ],
    };
    let stored = settle("dir.json", &produced);
    assert_eq!(
        stored.cases[0].nodes[0].hex,
        "434149524e44520100000000".to_string() + "00"
    );
    assert!(
        stored.cases[2].nodes.len() > 2,
        "a split gives pieces and a level-1 node"
    );
    for case in &stored.cases {
        // Bytes → entries: every node decodes, hashes to its id, re-encodes
        // identically, and the level-0 nodes hold the entries in order.
        let mut decoded = Vec::new();
        for n in &case.nodes {
            let bytes = unhex(&n.hex);
            assert_eq!(BlobId::of(&bytes).to_hex(), n.id, "{}", case.name);
            let node = DirNode::decode(&bytes, "d").unwrap();
            assert_eq!(node.level(), n.level);
            assert_eq!(node.encode(), bytes, "{}", case.name);
            if let DirNode::Entries(e) = node {
                decoded.extend(e);
            }
        }
        let entries: Vec<_> = case.entries.iter().map(entry_of_json).collect();
        assert_eq!(decoded, entries, "{}", case.name);
        // Entries → bytes: the writer gives the stored nodes and root.
        let again = dir_case(&case.name, entries);
        assert_eq!(&again, case, "{}", case.name);
        assert_eq!(case.root, case.nodes.last().unwrap().id);
    }
}

/// A version-2 manifest: the same framing and signature as manifest.json,
/// a body naming a directory tree (dir.json's second case) instead of items.
#[test]
fn manifest_v2_vectors() {
    use cairn_store::format::manifest::Totals;
    let dirs = dir_case("every kind and every optional field", sample_entries());
    let manifest = Manifest {
        version: 2,
        repository: RepoId(REPO_ID),
        time: "2026-12-05T02:00:00Z".parse().unwrap(),
        host: "node4".into(),
        tags: vec!["nightly".into()],
        source: SourceInfo {
            kind: SourceKind::Files,
            command: None,
            exit_status: None,
            url: None,
        },
        paths: vec!["volumes".into()],
        // Its time was given (an import): when it really ran.
        started: Some("2026-12-06T03:10:00.5Z".parse().unwrap()),
        parent: Some(SnapshotId::of(b"the parent")),
        root: Some(BlobId::from_hex(&dirs.root).unwrap()),
        totals: Some(Totals {
            files: 1,
            dirs: 1,
            other: 4,
            bytes: 5,
        }),
        items: vec![],
    };
    let produced = manifest_vector(
        manifest,
        "A version-2 snapshot manifest (README.md §11.3): framing, signature and key as in\n\
             manifest.json; the body names the root of a directory tree (dir.json's second case)\n\
             and lists no items.",
    );
    let stored = settle("manifest-v2.json", &produced);
    let object = unhex(&stored.object_hex);
    let id = SnapshotId::from_hex(&stored.snapshot_id).unwrap();
    let repo = RepoId::from_hex(&stored.repository).unwrap();
    let public: PublicKey = stored.public_key.parse().unwrap();
    let snapshot = decode_manifest(&object, id, &repo, &Trust::Keys(vec![public])).unwrap();
    assert_eq!(snapshot.manifest, stored.body);
    assert!(snapshot.manifest.items.is_empty());
    assert_eq!(snapshot.manifest.root.unwrap().to_hex(), dirs.root);
    assert!(!stored.body_text.contains("items"), "{}", stored.body_text);
    // A version-2 body listing items, or a version-1 body naming a root, is damaged.
    for (from, to) in [
        ("\"totals\"", "\"items\":[],\"totals\""),
        ("\"version\":2", "\"version\":1"),
    ] {
        let mut m = stored.body.clone();
        let text = stored.body_text.replacen(from, to, 1);
        m = serde_json::from_str(&text).unwrap_or(m);
        if text.contains("\"items\":[]") {
            // An empty list reads as no items: still valid.
            assert!(m.validate().is_ok());
        } else {
            assert!(m.validate().is_err(), "{text}");
        }
    }
}
