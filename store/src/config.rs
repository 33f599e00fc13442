//! The repository config: identity, format parameters, trusted keys.
//!
//! Stored once, create-only, as pretty JSON at the key `config`. Readers need
//! only `version` and `id`; the chunking, compression and tree parameters tell
//! writers how to cut and pack so that their data deduplicates with what is
//! already stored.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::chunker::ChunkingPolicy;
use crate::error::{Error, Result};
use crate::frame::CompressionParams;
use crate::id::RepoId;
use crate::key::PublicKey;
use crate::manifest::Trust;
use crate::tree::TreeParams;

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
        if self.pack_target_len < 1 << 16 || self.pack_target_len > MAX_PACK_TARGET_LEN {
            return Err(Error::invalid(format!(
                "pack target length {} out of range (64 KiB..={MAX_PACK_TARGET_LEN})",
                self.pack_target_len
            )));
        }
        Ok(())
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
}
