//! Identifiers: 32-byte BLAKE3 digests, each kind its own type.
//!
//! Everything Cairn stores is named by the BLAKE3 hash of its bytes: a chunk
//! or tree node by its plaintext ([`BlobId`]), a pack, index or snapshot
//! object by its whole stored bytes. The repository id is 32 random bytes.
//! Text form is lowercase hex, 64 characters.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use crate::error::Error;

/// Length in bytes of every id.
pub const ID_LEN: usize = 32;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// What this id names, for messages.
            pub const WHAT: &'static str = $what;

            /// The id of `bytes`: their BLAKE3 hash.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Result<Self, Error> {
                let mut out = [0u8; ID_LEN];
                hex::decode_to_slice(s, &mut out).map_err(|_| Error::InvalidInput {
                    detail: format!("{s:?} is not a {} id (64 hex characters)", $what),
                })?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::from_hex(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_hex(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A chunk of content or a tree node: BLAKE3 of its uncompressed bytes.
    BlobId,
    "blob"
);
id_type!(
    /// A pack file: BLAKE3 of the whole pack object.
    PackId,
    "pack"
);
id_type!(
    /// An index object: BLAKE3 of the whole index object.
    IndexId,
    "index"
);
id_type!(
    /// A snapshot: BLAKE3 of the whole signed manifest object.
    SnapshotId,
    "snapshot"
);
id_type!(
    /// A repository: 32 random bytes chosen at `init`.
    RepoId,
    "repository"
);

/// Hashes ids by their first eight bytes: they are uniformly random already.
#[derive(Default, Debug)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (a usize) and then its bytes; keep
        // the first eight bytes of the longest write.
        if bytes.len() >= 8 {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(word);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

/// A `HashMap`/`HashSet` hasher builder for id keys.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;
/// A map keyed by an id.
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdBuildHasher>;
/// A set of ids.
pub type IdSet<K> = std::collections::HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = BlobId::of(b"hello");
        assert_eq!(
            id.to_hex(),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert_eq!(BlobId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(BlobId::from_hex("ea8f").is_err());
        assert!(BlobId::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(id.short(), "ea8f163d");
    }

    #[test]
    fn id_map_works() {
        let mut m: IdMap<BlobId, u32> = IdMap::default();
        for i in 0..1000u32 {
            m.insert(BlobId::of(&i.to_le_bytes()), i);
        }
        for i in 0..1000u32 {
            assert_eq!(m[&BlobId::of(&i.to_le_bytes())], i);
        }
    }
}
