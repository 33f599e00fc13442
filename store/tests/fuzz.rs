#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
//! Fuzzing, on stable Rust, of every decoder a hostile store reaches: pack
//! footers and trailers, frames, index objects, tree nodes, manifests (with
//! their signatures), the config, key files and the serve request's key and
//! token parsers. (The HTTP request path of `cairn serve` is fuzzed end to
//! end in `cli/tests/fuzz_serve.rs`, CouchDB dump lines in
//! `couch/tests/fuzz.rs` with this harness, `fuzz/harness.rs`.)
//!
//! Each target starts from the test vectors in `format-spec/`, first
//! overwrites every little-endian length and count field of every seed with
//! boundary values (0, 1, len-1, len, len+1, u32::MAX, u64::MAX, …), then
//! runs random stacked mutations: bit flips, bytes set to 0x00/0xff/0x7f/0x80,
//! truncations, extensions, deletions, splices of two seeds and JSON tokens.
//! Integrity checks an attacker can satisfy are satisfied again after the
//! mutation (object ids are recomputed, pack footers rehashed, manifests
//! re-signed with the vector key: the attacker holds the signing key), so
//! the mutated bytes reach the structural decoders behind them.
//!
//! Every decode must return `Ok` or `Err`: a panic fails the test with the
//! input in hex, and so does a decode that requests more bytes from the
//! allocator than its bound (counted by the harness's instrumented global
//! allocator: the total of all requests during the call, an upper bound on its
//! peak). The bounds: 1 MiB and 16 bytes per input byte for every decoder, and
//! for frames 33 MiB, since a frame may legitimately claim up to
//! `MAX_FRAME_RAW_LEN` (32 MiB) raw bytes, which its decoder reserves.
//!
//! The PRNG is seeded per target, so a run is reproducible. The default
//! number of random inputs per target (20,000) keeps this file to about ten
//! seconds; the longer run, 13 million inputs in about five minutes:
//! `CAIRN_FUZZ_ITERATIONS=1000000 cargo test -p cairn-store --test fuzz --
//! --nocapture` (`CAIRN_FUZZ_SEED=N` picks another random stream).

use std::path::Path;

use cairn_store::format::config::Config;
use cairn_store::format::frame::{Codec, MAX_FRAME_RAW_LEN, decode_frame};
use cairn_store::format::index::{Index, decode_index};
use cairn_store::format::key::{PublicKey, SecretKey};
use cairn_store::format::manifest::{MANIFEST_MAGIC, SIGNATURE_DOMAIN, Trust, decode_manifest};
use cairn_store::format::pack::{
    FOOTER_LEN, PACK_END_MAGIC, PACK_MAGIC, PackFooter, PackTrailer, decode_pack,
    decode_trailer_from_tail,
};
use cairn_store::format::tree::TreeNode;
use cairn_store::id::{IndexId, PackId, RepoId, SnapshotId};
use cairn_store::serve::{Tokens, valid_key};

#[path = "fuzz/harness.rs"]
mod harness;

use harness::*;

// ---------------------------------------------------------------------------
// Seeds: the format-spec vectors.

fn u32_at(offset: usize) -> Field {
    Field { offset, width: 4 }
}

fn u64_at(offset: usize) -> Field {
    Field { offset, width: 8 }
}

/// The length and count fields of a pack trailer starting at `base`.
fn trailer_fields(trailer: &[u8], base: usize) -> Vec<Field> {
    let frames = read_field(trailer, u32_at(8)).unwrap() as usize;
    let blobs = read_field(trailer, u32_at(12)).unwrap() as usize;
    let mut fields = vec![u64_at(base), u32_at(base + 8), u32_at(base + 12)];
    for i in 0..frames {
        let at = base + 16 + 9 * i;
        fields.extend([
            u32_at(at),
            Field {
                offset: at + 4,
                width: 1,
            },
            u32_at(at + 5),
        ]);
    }
    for j in 0..blobs {
        fields.push(u32_at(base + 16 + 9 * frames + 36 * j + 32));
    }
    fields
}

struct PackVector {
    bytes: Vec<u8>,
    trailer_offset: usize,
    trailer: Vec<u8>,
}

fn pack_vector() -> PackVector {
    let v = spec("pack.json");
    PackVector {
        bytes: hex_of(&v["hex"]),
        trailer_offset: v["trailer"]["offset"].as_u64().unwrap() as usize,
        trailer: hex_of(&v["trailer"]["hex"]),
    }
}

/// A pack of the vector's frames and `trailer`, with a footer that names
/// the trailer correctly: what a writer holding no secret can produce.
fn repack(frames: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut out = frames.to_vec();
    out.extend_from_slice(trailer);
    out.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(trailer).as_bytes());
    out.extend_from_slice(&PACK_END_MAGIC);
    out
}

/// What a reader may rely on once a trailer decoded: the frames tile the
/// pack from offset 8 to the trailer, the blobs tile each raw frame.
fn check_trailer(t: &PackTrailer, trailer_offset: u64) {
    let mut offset = PACK_MAGIC.len() as u64;
    for f in &t.frames {
        assert_eq!(u64::from(f.offset), offset, "frame offset");
        assert!(f.raw_len <= MAX_FRAME_RAW_LEN, "frame raw length");
        offset += u64::from(f.stored_len);
    }
    assert_eq!(offset, trailer_offset, "frames end at the trailer");
    let mut next = vec![0u64; t.frames.len()];
    for b in &t.blobs {
        let frame = t.frames.get(b.frame as usize).expect("blob frame exists");
        assert_eq!(u64::from(b.offset), next[b.frame as usize], "blob offset");
        assert!(b.len > 0, "blob length");
        next[b.frame as usize] += u64::from(b.len);
        assert!(
            u64::from(b.offset) + u64::from(b.len) <= u64::from(frame.raw_len),
            "blob within its frame"
        );
    }
    for (f, end) in t.frames.iter().zip(next) {
        assert_eq!(u64::from(f.raw_len), end, "blobs cover the raw frame");
    }
}

// ---------------------------------------------------------------------------
// Targets.

#[test]
fn fuzz_pack_trailers() {
    let p = pack_vector();
    let frames = p.bytes[..p.trailer_offset].to_vec();
    let seeds = [Seed::new(p.trailer.clone(), trailer_fields(&p.trailer, 0))];
    let mut rng = Rng::new("pack trailer offsets");
    fuzz("pack trailer", &seeds, DECODE_BOUND, 20_000, |trailer| {
        // Behind a correct footer: the trailer decoder sees the mutation.
        let pack = repack(&frames, trailer);
        let decoded = decode_pack(&pack, PackId::of(&pack));
        if let Ok(t) = &decoded {
            check_trailer(t, frames.len() as u64);
        }
        // From a tail read, with the real or a lying pack length.
        let cut = rng.below(pack.len() + 1);
        let pack_len = *rng.pick(&[
            pack.len() as u64,
            pack.len() as u64 + 1,
            pack.len() as u64 - 1,
            0,
            u64::from(u32::MAX),
            u64::MAX,
        ]);
        let _ = decode_trailer_from_tail(pack_len, &pack[cut..], "fuzz");
        // Directly, at any offset.
        let offset = *rng.pick(&[0, 8, frames.len() as u64, u64::MAX]);
        if let Ok(t) = PackTrailer::decode(trailer, offset, "fuzz") {
            check_trailer(&t, offset);
        }
        decoded.is_ok()
    });
}

#[test]
fn fuzz_pack_footers_and_whole_packs() {
    let p = pack_vector();
    let footer_at = p.bytes.len() - FOOTER_LEN;
    let mut fields = trailer_fields(&p.trailer, p.trailer_offset);
    fields.push(u32_at(footer_at));
    let seeds = [
        Seed::new(p.bytes.clone(), fields),
        Seed::new(&p.bytes[footer_at..], vec![u32_at(0)]),
    ];
    fuzz("pack", &seeds, DECODE_BOUND, 20_000, |bytes| {
        if bytes.len() == FOOTER_LEN {
            if let Ok(footer) = PackFooter::decode(bytes, "fuzz") {
                for len in [0, 52, p.bytes.len() as u64, u64::from(u32::MAX), u64::MAX] {
                    if let Ok(offset) = footer.trailer_offset(len, "fuzz") {
                        assert!(offset + u64::from(footer.trailer_len) + 44 == len);
                    }
                }
            }
        }
        // Stored under its own name: only the structure can refuse it.
        let decoded = decode_pack(bytes, PackId::of(bytes));
        if let Ok(t) = &decoded {
            let trailer_offset = bytes.len() - FOOTER_LEN - t.encode().len();
            check_trailer(t, trailer_offset as u64);
        }
        for cut in [0, bytes.len() / 2, bytes.len().saturating_sub(FOOTER_LEN)] {
            let _ = decode_trailer_from_tail(bytes.len() as u64, &bytes[cut..], "fuzz");
        }
        decoded.is_ok()
    });
}

#[test]
fn fuzz_frames() {
    let v = spec("blob.json");
    let frames: Vec<(Codec, Vec<u8>, u32)> = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let codec = Codec::from_u8(f["codec_byte"].as_u64().unwrap() as u8).unwrap();
            let raw_len = f["raw_len"].as_u64().unwrap() as u32;
            (codec, hex_of(&f["stored_hex"]), raw_len)
        })
        .collect();
    // The zstd frame header's content size is a length field too.
    let seeds: Vec<Seed> = frames
        .iter()
        .map(|(_, stored, _)| Seed::new(stored.clone(), vec![u32_at(4), u64_at(4)]))
        .collect();
    let mut rng = Rng::new("frame raw lengths");
    fuzz("frame", &seeds, FRAME_BOUND, 20_000, |stored| {
        let (codec, _, raw_len) = rng.pick(&frames);
        let raw_len = *rng.pick(&[
            *raw_len,
            raw_len.wrapping_sub(1),
            raw_len + 1,
            0,
            stored.len() as u32,
            MAX_FRAME_RAW_LEN,
            MAX_FRAME_RAW_LEN + 1,
            u32::MAX,
        ]);
        let codec = if rng.one_in(4) {
            match codec {
                Codec::Raw => Codec::Zstd,
                Codec::Zstd => Codec::Raw,
            }
        } else {
            *codec
        };
        match decode_frame(codec, stored, raw_len) {
            Ok(raw) => {
                assert_eq!(raw.len(), raw_len as usize, "decoded length");
                true
            }
            Err(_) => false,
        }
    });
}

#[test]
fn fuzz_index_objects() {
    let v = spec("index.json");
    let bytes = hex_of(&v["hex"]);
    let mut fields = vec![u64_at(8), u32_at(16)];
    let mut at = 20;
    for p in v["packs"].as_array().unwrap() {
        let trailer = hex_of(&p["trailer_hex"]);
        fields.extend([u64_at(at + 32), u32_at(at + 40)]);
        fields.extend(trailer_fields(&trailer, at + 44));
        at += 44 + trailer.len();
    }
    assert_eq!(at, bytes.len());
    let seeds = [Seed::new(bytes, fields)];
    fuzz("index", &seeds, DECODE_BOUND, 20_000, |bytes| {
        let Ok(packs) = decode_index(bytes, IndexId::of(bytes)) else {
            return false;
        };
        for p in &packs {
            let trailer_len = p.trailer.encode().len() as u64;
            check_trailer(&p.trailer, p.len - FOOTER_LEN as u64 - trailer_len);
        }
        let mut index = Index::new();
        index.add(Some(IndexId::of(bytes)), &packs);
        for (id, loc) in index.blobs() {
            let pack = index.pack(loc.pack);
            let frame = pack.frames.get(loc.frame as usize).expect("frame exists");
            assert!(loc.offset + loc.len <= frame.raw_len, "blob {id} in frame");
        }
        true
    });
}

#[test]
fn fuzz_tree_nodes() {
    let v = spec("tree.json");
    let mut seeds = Vec::new();
    for case in v["cases"].as_array().unwrap() {
        for node in case["nodes"].as_array().unwrap().iter().take(3) {
            let bytes = hex_of(&node["hex"]);
            let count = read_field(&bytes, u32_at(9)).unwrap() as usize;
            let mut fields = vec![
                Field {
                    offset: 8,
                    width: 1,
                },
                u32_at(9),
            ];
            fields.extend((0..count.min(8)).map(|i| u64_at(13 + 40 * i + 32)));
            seeds.push(Seed::new(bytes, fields));
        }
    }
    fuzz("tree node", &seeds, DECODE_BOUND, 20_000, |bytes| {
        let Ok(node) = TreeNode::decode(bytes, "fuzz") else {
            return false;
        };
        let _ = node.content_len();
        assert_eq!(node.encode(), bytes, "a node re-encodes to its bytes");
        true
    });
}

struct ManifestVector {
    object: Vec<u8>,
    body: Vec<u8>,
    key: SecretKey,
    repository: RepoId,
}

fn manifest_vector() -> ManifestVector {
    let v = spec("manifest.json");
    let seed: [u8; 32] = hex_of(&v["key_seed_hex"]).try_into().unwrap();
    let repository = RepoId(hex_of(&v["repository"]).try_into().unwrap());
    ManifestVector {
        object: hex_of(&v["object_hex"]),
        body: v["body_text"].as_str().unwrap().as_bytes().to_vec(),
        key: SecretKey::from_seed(&seed),
        repository,
    }
}

/// A manifest object around `body`, signed by `key` for `repository`.
fn sign_manifest(body: &[u8], key: &SecretKey, repository: &RepoId) -> Vec<u8> {
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(repository.as_bytes());
    message.extend_from_slice(body);
    let mut out = MANIFEST_MAGIC.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(key.public().as_bytes());
    out.extend_from_slice(&key.sign(&message));
    out
}

/// What readers call on a manifest that decoded.
fn use_manifest(m: &cairn_store::format::manifest::Manifest) {
    let _ = m.name();
    for item in &m.items {
        assert!(m.item(&item.name).is_some(), "items are found by name");
    }
    // Once overflowed when the lengths added up past u64::MAX (now refused at decode).
    let _ = m.total_len();
}

#[test]
fn fuzz_manifests() {
    let v = manifest_vector();
    let seeds = [Seed::new(v.object.clone(), vec![u32_at(8)])];
    let trust = Trust::Keys(vec![v.key.public()]);
    fuzz("manifest object", &seeds, DECODE_BOUND, 20_000, |bytes| {
        let id = SnapshotId::of(bytes);
        let _ = decode_manifest(bytes, id, &v.repository, &Trust::AnyValidSignature);
        let Ok(s) = decode_manifest(bytes, id, &v.repository, &trust) else {
            return false;
        };
        use_manifest(&s.manifest);
        true
    });
}

#[test]
fn fuzz_signed_manifest_bodies() {
    let v = manifest_vector();
    let seeds = [Seed::plain(v.body.clone()), deeply_nested("items", 100_000)];
    let trust = Trust::Keys(vec![v.key.public()]);
    fuzz("manifest body", &seeds, DECODE_BOUND, 8_000, |body| {
        // The attacker holds the signing key (a compromised backup host).
        let object = sign_manifest(body, &v.key, &v.repository);
        let id = SnapshotId::of(&object);
        let Ok(s) = decode_manifest(&object, id, &v.repository, &trust) else {
            return false;
        };
        use_manifest(&s.manifest);
        s.manifest.validate().unwrap();
        true
    });
}

#[test]
fn fuzz_configs() {
    let v = spec("config.json");
    let seeds = [
        Seed::plain(v["text"].as_str().unwrap()),
        deeply_nested("trusted_keys", 100_000),
    ];
    fuzz("config", &seeds, DECODE_BOUND, 20_000, |bytes| {
        let Ok(config) = Config::decode(bytes) else {
            return false;
        };
        let _ = config.trust();
        let _ = config.validate();
        assert_eq!(
            Config::decode(&config.encode()).unwrap(),
            config,
            "a config re-encodes to itself"
        );
        true
    });
}

#[test]
fn fuzz_key_files_and_public_keys() {
    let v = spec("key.json");
    let mut seeds = vec![Seed::plain(v["file_text"].as_str().unwrap())];
    for list in ["accepted_public_key_forms", "rejected_public_key_forms"] {
        for form in v[list].as_array().unwrap() {
            seeds.push(Seed::plain(form.as_str().unwrap()));
        }
    }
    fuzz("key file", &seeds, DECODE_BOUND, 20_000, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let file = SecretKey::decode_file(&text, Path::new("fuzz-key"));
        if let Ok(key) = &file {
            let again = SecretKey::decode_file(&key.encode_file(), Path::new("fuzz-key"));
            assert_eq!(again.unwrap().public(), key.public());
        }
        let public = text.parse::<PublicKey>();
        if let Ok(public) = &public {
            assert_eq!(&public.to_string().parse::<PublicKey>().unwrap(), public);
        }
        file.is_ok() || public.is_ok()
    });
}

#[test]
fn fuzz_serve_keys_and_tokens() {
    let mut seeds: Vec<Seed> = [
        "config",
        "packs/ab/abcdef",
        "index/0123",
        "snapshots/ff",
        "locks/x.alive",
        "gc/log-1-2",
        "replicas/abc",
        "probe-0123",
        "packs/../config",
    ]
    .into_iter()
    .map(Seed::plain)
    .collect();
    seeds.push(Seed::plain(
        "# roles\nadmin aaaaaaaaaaaaaaaaaaaaaaaaaaaa\nappend bbbbbbbbbbbbbbbbbbbbbbbbbbbb\nread cccccccccccccccccccccccccccc\n",
    ));
    fuzz(
        "serve keys and tokens",
        &seeds,
        DECODE_BOUND,
        20_000,
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let valid = valid_key(&text);
            if valid {
                assert!(
                    !text.starts_with('/')
                        && text
                            .split('/')
                            .all(|c| !c.is_empty() && c != "." && c != "..")
                        && !text.contains(['\\', '\0', '%', '?', '#']),
                    "valid_key accepted {text:?}"
                );
            }
            Tokens::parse(&text).is_ok() || valid
        },
    );
}

#[test]
fn fuzz_lease_and_gc_objects() {
    // Objects the append role may write under locks/ and gc/ and that gc,
    // the lease listing and unlock read back.
    let pack = "ab".repeat(32);
    let seeds = [
        Seed::plain(
            r#"{"kind":"backup","host":"node4","pid":4242,"started":"2025-01-01T00:00:00Z","ttl_secs":600,"holder":"h-1"}"#,
        ),
        Seed::plain(format!(
            r#"{{"version":1,"run":"r-1","packs":[{{"id":"{pack}","reason":"unreferenced","len":416}}]}}"#
        )),
        Seed::plain(r#"{"run":"r-1","writers":["backup-1","gc"]}"#),
        Seed::plain(format!(
            r#"{{"object":"pack {pack}","reason":"unreferenced"}}"#
        )),
    ];
    fuzz(
        "lease and gc objects",
        &seeds,
        DECODE_BOUND,
        20_000,
        |bytes| {
            use cairn_store::lease::LeaseRecord;
            use cairn_store::plan::gc::{CondemnedList, LoggedDeletion, WritersAtCondemnation};
            serde_json::from_slice::<LeaseRecord>(bytes).is_ok()
                | serde_json::from_slice::<CondemnedList>(bytes).is_ok()
                | serde_json::from_slice::<WritersAtCondemnation>(bytes).is_ok()
                | serde_json::from_slice::<LoggedDeletion>(bytes).is_ok()
        },
    );
}

/// The harness itself: a panic and an allocation over the bound are both caught.
#[test]
fn the_harness_reports_panics_and_large_allocations() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let panicking = run_one(DECODE_BOUND, b"x", &mut |_| panic!("boom"));
    std::panic::set_hook(hook);
    assert_eq!(panicking, Err("panicked: boom".to_string()));
    let greedy = run_one(DECODE_BOUND, b"x", &mut |_| {
        std::hint::black_box(Vec::<u8>::with_capacity(DECODE_BOUND + 1024));
        true
    });
    assert!(
        greedy.clone().unwrap_err().contains("over the bound"),
        "{greedy:?}"
    );
    assert_eq!(run_one(DECODE_BOUND, b"x", &mut |_| true), Ok(true));
}
