//! Signing keys: ed25519 secret key files and public keys as text.
//!
//! A public key is written `ed25519:` followed by 64 hex characters. A secret
//! key file is a small JSON document holding the 32-byte seed and the public
//! key derived from it (checked on load, so a damaged file is caught before it
//! signs anything). Files are created with mode 0600 and never overwritten.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Prefix of a public key's text form.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub(crate) VerifyingKey);

impl PublicKey {
    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// From 32 bytes; fails for bytes that are not a curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| Error::invalid("not a valid ed25519 public key"))
    }

    /// Verifies with `verify_strict`: no malleable or small-order signatures.
    pub fn verify_strict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let hex_part = s.strip_prefix(PUBLIC_KEY_PREFIX).unwrap_or(s);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| {
            Error::invalid(format!(
                "{s:?} is not a public key: expected `{PUBLIC_KEY_PREFIX}` and 64 hex characters \
                 (as printed by `cairn key generate` or `cairn key public`)"
            ))
        })?;
        PublicKey::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signing key.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kind: String,
    version: u32,
    algorithm: String,
    secret: String,
    public: PublicKey,
}

const KEY_FILE_KIND: &str = "cairn-secret-key";
/// A key file is a few hundred bytes; anything much larger is not one.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
        Ok(Self::from_seed(&seed))
    }

    /// The key for a 32-byte seed (test vectors use a fixed one).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The key file's text.
    pub fn encode_file(&self) -> String {
        let file = KeyFile {
            kind: KEY_FILE_KIND.into(),
            version: 1,
            algorithm: "ed25519".into(),
            secret: hex::encode(self.0.to_bytes()),
            public: self.public(),
        };
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses a key file's text; `path` names it in errors.
    pub fn decode_file(text: &str, path: &Path) -> Result<Self> {
        let bad = |detail: String| Error::Key {
            path: path.to_owned(),
            detail,
        };
        let file: KeyFile = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a Cairn secret key file ({e})")))?;
        if file.kind != KEY_FILE_KIND || file.version != 1 || file.algorithm != "ed25519" {
            return Err(bad(format!(
                "unsupported key file (kind {:?}, version {}, algorithm {:?})",
                file.kind, file.version, file.algorithm
            )));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.secret, &mut seed)
            .map_err(|_| bad("secret is not 64 hex characters".into()))?;
        let key = Self::from_seed(&seed);
        if key.public() != file.public {
            return Err(bad(
                "the secret does not match the recorded public key; the file is damaged".into(),
            ));
        }
        Ok(key)
    }

    /// Writes a new key file with mode 0600; refuses to overwrite.
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(path).map_err(|e| Error::Key {
            path: path.to_owned(),
            detail: if e.kind() == std::io::ErrorKind::AlreadyExists {
                "already exists; refusing to overwrite a key (move it away first)".into()
            } else {
                format!("cannot create: {e}")
            },
        })?;
        f.write_all(self.encode_file().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::Key {
                path: path.to_owned(),
                detail: format!("cannot write: {e}"),
            })
    }

    /// Reads a key file. One that group or others may read is refused, as
    /// ssh refuses such a private key: the secret may already be out.
    pub fn read_file(path: &Path) -> Result<Self> {
        let fail = |detail: String| Error::Key {
            path: path.to_owned(),
            detail,
        };
        let mut file = std::fs::File::open(path).map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist; create one with `cairn key generate --output FILE`".into()
            } else {
                format!("cannot read: {e}")
            })
        })?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        #[cfg(unix)]
        if let Some(why) = secret_file_exposed(&file, &meta) {
            return Err(fail(format!(
                "{why}; the secret key may have leaked: `chmod 600` it (and replace the key if \
                 others could read it)"
            )));
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(fail(format!(
                "is {} bytes, not a key file (at most {MAX_KEY_FILE_LEN})",
                meta.len()
            )));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&mut file, MAX_KEY_FILE_LEN),
            &mut text,
        )
        .map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::decode_file(&text, path)
    }
}

/// Why a secret file (a key, `cairn serve`'s tokens) is readable by others
/// than this process's user, or `None` when it is not: mode 0600 or
/// stricter, or the one shape Kubernetes gives a Secret mounted for a pod
/// with `fsGroup` (owned by root, readable by its group, writable by no
/// one but root, the group being this non-root process's own).
/// `meta` is the opened `file`'s own, not its path's: nothing can swap
/// the file between the check and the read. A file with a POSIX access
/// ACL is never taken for the Kubernetes shape (its group bits are then
/// only a mask, and a named user may read it).
#[cfg(unix)]
pub fn secret_file_exposed(file: &std::fs::File, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    let why = exposure(meta.mode() & 0o777, meta.uid(), meta.gid(), euid, egid);
    if why.is_none() && meta.mode() & 0o070 != 0 && has_access_acl(file) {
        return Some(format!(
            "has a POSIX ACL beside mode {:03o} (others may read it)",
            meta.mode() & 0o777
        ));
    }
    why
}

/// Whether the file carries an access ACL (`system.posix_acl_access`).
#[cfg(unix)]
fn has_access_acl(file: &std::fs::File) -> bool {
    let mut buf = [0u8; 0];
    match rustix::fs::fgetxattr(file, "system.posix_acl_access", &mut buf[..]) {
        Ok(_) => true,
        // ERANGE: present (and longer than the empty buffer).
        Err(e) => e == rustix::io::Errno::RANGE,
    }
}

/// [`secret_file_exposed`] over plain numbers.
fn exposure(mode: u32, uid: u32, gid: u32, euid: u32, egid: u32) -> Option<String> {
    if mode & 0o077 == 0 {
        return None;
    }
    let kubernetes_secret = mode & 0o037 == 0 && uid == 0 && euid != 0 && gid == egid;
    if kubernetes_secret {
        return None;
    }
    Some(format!("is readable by group or others (mode {mode:03o})"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_access_acl_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "x").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(!super::has_access_acl(&file));
        // user::rw-, user:1000:r--, group::r--, mask::r--, other::---
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 6u16, u32::MAX),
            (0x02, 4, 1000),
            (0x04, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        rustix::fs::setxattr(
            &path,
            "system.posix_acl_access",
            &acl,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(super::has_access_acl(&file), "user:1000 may read it");
    }

    #[test]
    fn only_private_files_or_a_pod_group_secret_count_as_secret() {
        use super::exposure;
        // (mode, owner, group) as this process (uid 65532, gid 65532) sees them.
        let me = |mode, uid, gid| exposure(mode, uid, gid, 65532, 65532).is_none();
        assert!(me(0o600, 65532, 65532) && me(0o400, 65532, 1));
        assert!(me(0o440, 0, 65532), "a Secret mounted with fsGroup 65532");
        assert!(!me(0o444, 0, 65532), "others may read");
        assert!(!me(0o460, 0, 65532), "the group may write");
        assert!(!me(0o440, 1000, 65532), "owned by another user");
        assert!(!me(0o440, 0, 100), "another group");
        assert!(!me(0o640, 65532, 65532), "group-readable, not root's");
        assert!(
            exposure(0o440, 0, 0, 0, 0).is_some(),
            "as root, group 0 is everyone's root"
        );
    }

    use super::*;

    #[test]
    fn key_files_round_trip_and_detect_damage() {
        let key = SecretKey::from_seed(&[7u8; 32]);
        let text = key.encode_file();
        let back = SecretKey::decode_file(&text, Path::new("k")).unwrap();
        assert_eq!(back.public(), key.public());

        let damaged = text.replacen("\"secret\": \"07", "\"secret\": \"08", 1);
        let err = SecretKey::decode_file(&damaged, Path::new("k")).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Key);
        assert!(SecretKey::decode_file("{}", Path::new("k")).is_err());
    }

    #[test]
    fn public_keys_parse_with_or_without_prefix() {
        let public = SecretKey::from_seed(&[1u8; 32]).public();
        let text = public.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>().unwrap(), public);
        assert_eq!(
            text["ed25519:".len()..].parse::<PublicKey>().unwrap(),
            public
        );
        assert!("ed25519:abcd".parse::<PublicKey>().is_err());
    }

    #[test]
    fn new_key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = SecretKey::generate().unwrap();
        key.write_new_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = SecretKey::generate()
            .unwrap()
            .write_new_file(&path)
            .unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Key);
        assert_eq!(SecretKey::read_file(&path).unwrap().public(), key.public());
    }
}
