//! The repository config: identity, format parameters, trusted keys.
//!
//! Stored once, create-only, as pretty JSON at the key `config`. Readers need
//! only `version` and `id`; the chunking, compression and tree parameters tell
//! writers how to cut and pack so that their data deduplicates with what is
//! already stored.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::chunker::ChunkingPolicy;
use crate::format::frame::CompressionParams;
use crate::format::key::PublicKey;
use crate::format::manifest::Trust;
use crate::format::tree::TreeParams;
use crate::id::RepoId;

/// The repository format version this build writes and reads.
pub const REPO_VERSION: u32 = 1;
/// The largest pack target a writer accepts (packs stay well within the
/// trailer and offset limits readers enforce).
pub const MAX_PACK_TARGET_LEN: u32 = 32 << 20;
/// The largest config a reader accepts.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// The repository config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version.
    pub version: u32,
    /// Random repository id; signatures bind to it.
    pub id: RepoId,
    /// When `init` ran.
    pub created: Timestamp,
    /// How each item's chunk size is chosen.
    pub chunking: ChunkingPolicy,
    /// How frames are compressed.
    pub compression: CompressionParams,
    /// How chunk lists are split into tree nodes.
    pub tree: TreeParams,
    /// Packs are closed once they reach about this many bytes.
    pub pack_target_len: u32,
    /// Keys whose snapshots readers accept; empty means any valid signature.
    pub trusted_keys: Vec<PublicKey>,
}

impl Config {
    /// A new config with a random id and the default parameters.
    pub fn new(trusted_keys: Vec<PublicKey>) -> Result<Config> {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
        Ok(Config {
            version: REPO_VERSION,
            id: RepoId(id),
            created: Timestamp::now(),
            chunking: ChunkingPolicy::DEFAULT,
            compression: CompressionParams::DEFAULT,
            tree: TreeParams::DEFAULT,
            pack_target_len: 4 << 20,
            trusted_keys,
        })
    }

    /// Checks every parameter.
    pub fn validate(&self) -> Result<()> {
        self.chunking.validate()?;
        self.compression.validate()?;
        self.tree.validate()?;
        // A pack is closed once it reaches the target, so it is at most the
        // target plus one frame: within what readers accept.
        if self.pack_target_len < MIN_PACK_TARGET_LEN || self.pack_target_len > MAX_PACK_TARGET_LEN
        {
            return Err(Error::invalid(format!(
                "pack target length {} out of range ({MIN_PACK_TARGET_LEN}..={MAX_PACK_TARGET_LEN})",
                self.pack_target_len
            )));
        }
        Ok(())
    }

    /// Checks the writer parameters before a writer uses them (format-spec
    /// §4): the config is not signed, so out-of-range values are damage
    /// (possibly tampering), refused naming each field, its value and its
    /// range. Readers do not call this: they need only the version, the id
    /// and the trusted keys.
    pub fn check_writer_params(&self) -> Result<()> {
        let mut problems = writer_param_problems(self);
        if problems.is_empty() {
            // A backstop: whatever the checks above missed, the parameter
            // types' own checks catch before a chunker, packer or tree
            // builder sees the values.
            if let Err(e) = self.validate() {
                problems.push(e.to_string());
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::corrupt(
            "config",
            format!(
                "writer settings out of range (format-spec §4): {}. The config is not signed, so \
                 it may have been tampered with; nothing was written. Reading still works \
                 (snapshots, restore, verify); to write again, put back the config of a \
                 replica of this repository (the same id), or `cairn init` a new repository",
                problems.join("; ")
            ),
        ))
    }

    /// The config's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a stored config.
    pub fn decode(bytes: &[u8]) -> Result<Config> {
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(Error::corrupt(
                "config",
                format!("{} bytes, over the limit", bytes.len()),
            ));
        }
        // Read the version first so a newer format gets a clear message.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt("config", format!("not a Cairn config: {e}")))?;
        if v.version != REPO_VERSION {
            return Err(Error::Unsupported {
                what: format!(
                    "the repository has format version {}, this cairn reads version {REPO_VERSION}; \
                     use a cairn release that supports it",
                    v.version
                ),
            });
        }
        // Writer parameters are checked by writers (`validate`), not here: a
        // reader needs only the version and the id.
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt("config", e.to_string()))
    }

    /// The trust policy the config states.
    pub fn trust(&self) -> Trust {
        if self.trusted_keys.is_empty() {
            Trust::AnyValidSignature
        } else {
            Trust::Keys(self.trusted_keys.clone())
        }
    }
}

/// The smallest and largest average chunk length a policy may name: FastCDC
/// needs `avg / 4 >= 64` and `avg * 8 <= 16 MiB` (format-spec §6.1, §14).
const MIN_AVG_LEN: u32 = 256;
const MAX_AVG_LEN: u32 = 2 << 20;
/// zstd levels a writer uses.
const LEVELS: std::ops::RangeInclusive<i32> = -7..=19;
/// Frame targets a writer uses: 1 byte to 16 MiB.
const MAX_FRAME_TARGET_LEN: u32 = crate::format::frame::MAX_FRAME_RAW_LEN / 2;
/// The smallest pack target a writer uses.
const MIN_PACK_TARGET_LEN: u32 = 64 << 10;

/// Each writer parameter out of its range, as "FIELD is VALUE, RANGE".
fn writer_param_problems(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |ok: bool, field: &str, value: String, range: String| {
        if !ok {
            out.push(format!("{field} is {value}, allowed: {range}"));
        }
    };
    let chunking = &c.chunking;
    let avg_ok = |v: u32| v.is_power_of_two() && (MIN_AVG_LEN..=MAX_AVG_LEN).contains(&v);
    check(
        chunking.normalization <= 3,
        "chunking.normalization",
        chunking.normalization.to_string(),
        "0..=3".into(),
    );
    check(
        avg_ok(chunking.min_avg_len),
        "chunking.min_avg_len",
        chunking.min_avg_len.to_string(),
        format!("a power of two in {MIN_AVG_LEN}..={MAX_AVG_LEN}"),
    );
    check(
        avg_ok(chunking.max_avg_len) && chunking.max_avg_len >= chunking.min_avg_len,
        "chunking.max_avg_len",
        chunking.max_avg_len.to_string(),
        format!("a power of two in {MIN_AVG_LEN}..={MAX_AVG_LEN}, at least chunking.min_avg_len"),
    );
    if chunking.min_avg_len > chunking.max_avg_len {
        check(
            false,
            "chunking.min_avg_len",
            chunking.min_avg_len.to_string(),
            format!("at most chunking.max_avg_len ({})", chunking.max_avg_len),
        );
    }
    check(
        chunking.target_stored_len > 0,
        "chunking.target_stored_len",
        chunking.target_stored_len.to_string(),
        "at least 1".into(),
    );
    let compression = &c.compression;
    check(
        LEVELS.contains(&compression.level),
        "compression.level",
        compression.level.to_string(),
        format!("{}..={}", LEVELS.start(), LEVELS.end()),
    );
    check(
        (1..=MAX_FRAME_TARGET_LEN).contains(&compression.frame_target_len),
        "compression.frame_target_len",
        compression.frame_target_len.to_string(),
        format!("1..={MAX_FRAME_TARGET_LEN}"),
    );
    let tree = &c.tree;
    let max_fanout = crate::format::tree::MAX_FANOUT;
    check(
        (2..=max_fanout).contains(&tree.min_fanout),
        "tree.min_fanout",
        tree.min_fanout.to_string(),
        format!("2..={max_fanout}"),
    );
    check(
        (2..=max_fanout).contains(&tree.max_fanout) && tree.max_fanout >= tree.min_fanout,
        "tree.max_fanout",
        tree.max_fanout.to_string(),
        format!("2..={max_fanout}, at least tree.min_fanout"),
    );
    check(
        tree.avg_fanout.is_power_of_two() && tree.avg_fanout <= tree.max_fanout,
        "tree.avg_fanout",
        tree.avg_fanout.to_string(),
        "a power of two, at most tree.max_fanout".into(),
    );
    check(
        (MIN_PACK_TARGET_LEN..=MAX_PACK_TARGET_LEN).contains(&c.pack_target_len),
        "pack_target_len",
        c.pack_target_len.to_string(),
        format!("{MIN_PACK_TARGET_LEN}..={MAX_PACK_TARGET_LEN}"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_and_newer_versions_are_unsupported() {
        let c = Config::new(vec![]).unwrap();
        assert_eq!(Config::decode(&c.encode()).unwrap(), c);
        let newer = String::from_utf8(c.encode())
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        let err = Config::decode(newer.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Unsupported);
        assert_eq!(
            Config::decode(b"garbage").unwrap_err().kind(),
            crate::error::ErrorKind::Corrupt
        );
    }

    #[test]
    fn writer_params_out_of_range_are_named_and_defaults_pass() {
        let c = Config::new(vec![]).unwrap();
        c.check_writer_params().unwrap();
        let mut bad = c.clone();
        bad.chunking.min_avg_len = 131_072;
        bad.tree.max_fanout = 0;
        bad.compression.level = 99;
        bad.compression.frame_target_len = 0;
        bad.pack_target_len = 1;
        let err = bad.check_writer_params().unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Corrupt);
        let text = err.to_string();
        for field in [
            "chunking.min_avg_len is 131072",
            "tree.max_fanout is 0",
            "compression.level is 99",
            "compression.frame_target_len is 0",
            "pack_target_len is 1,",
            "tampered",
        ] {
            assert!(text.contains(field), "{field} missing: {text}");
        }
        // A reader still decodes it.
        assert_eq!(Config::decode(&bad.encode()).unwrap(), bad);
    }
}
