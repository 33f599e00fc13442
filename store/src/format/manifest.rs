//! Snapshot manifests, signed with ed25519.
//!
//! ```text
//! "CAIRNSN\x01" | body_len u32 | body (UTF-8 JSON) | public key [32] | signature [64]
//! signature = ed25519(secret, "cairn snapshot v1\0" | repository id [32] | body)
//! ```
//! The signature covers the body bytes exactly as stored, so nothing is ever
//! re-serialised to check it. The snapshot's id is the BLAKE3 of the whole
//! object. A reader checks, in order: the id, the framing, the signature
//! (`verify_strict`), the signer against the trusted keys, then parses the
//! body and checks it names this repository.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::key::{PublicKey, SecretKey};
use crate::format::wire::{Put, Reader, len_u32};
use crate::id::{BlobId, RepoId, SnapshotId};

/// First bytes of every manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"CAIRNSN\x01";
/// Domain separation for snapshot signatures.
pub const SIGNATURE_DOMAIN: &[u8] = b"cairn snapshot v1\0";
/// The largest manifest body a reader accepts.
pub const MAX_BODY_LEN: u32 = 64 << 20;
/// The manifest body version this build writes: 2, a directory tree's root
/// (version 1, an item list, is still read).
pub const MANIFEST_VERSION: u32 = 2;

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Body format version: 1 (items listed here) or 2 (a directory tree).
    pub version: u32,
    /// The repository this snapshot belongs to.
    pub repository: RepoId,
    /// When the backup started, UTC.
    pub time: Timestamp,
    /// The host that made it.
    pub host: String,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Where the data came from.
    pub source: SourceInfo,
    /// Version 2: the top-level names of the tree, sorted (what was backed
    /// up; a backup's parent is the newest snapshot of the same host and paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Version 2: when the backup really started, where `time` says
    /// otherwise (a backup given its time, as an import of an old dump is):
    /// a later backup compares files' change times with this, not `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    /// Version 2: the snapshot this backup compared its files with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// Version 2: the root of the directory tree (format-spec §10.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<BlobId>,
    /// Version 2: what the tree holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
    /// Version 1: the items, in name order (empty in version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
}

/// What a version-2 snapshot's tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Regular files (each hard link counted).
    pub files: u64,
    /// Directories (not counting the root).
    pub dirs: u64,
    /// Symlinks, FIFOs and devices.
    pub other: u64,
    /// Content bytes of the files.
    pub bytes: u64,
}

/// Where a snapshot's data came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// `files`, `stdin` or `command`.
    pub kind: SourceKind,
    /// The command line, for `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The command's exit status, for `command` (always 0: a failure writes no snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// The server, for `couchdb` (never with credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The kind of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Files and directories.
    Files,
    /// Standard input.
    Stdin,
    /// A command's standard output.
    Command,
    /// CouchDB databases (see `cairn_couch::format`).
    Couchdb,
    /// CouchDB `_all_docs` dump files imported (winning revisions only).
    CouchdbImport,
}

/// One named thing in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Relative path with `/` separators.
    pub name: String,
    /// File, directory or symlink.
    pub kind: ItemKind,
    /// Content length (0 for directories and symlinks).
    pub len: u64,
    /// Root of the content tree (files only): commits to every chunk id in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<BlobId>,
    /// Number of chunks (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// How the content was cut (files only); the next backup of the same
    /// name cuts the same way so that its chunks deduplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunker: Option<crate::format::chunker::ChunkerParams>,
    /// Unix permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<Timestamp>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Not part of a version-1 manifest: set when this item was read from
    /// a version-2 tree whose entry names its one chunk directly (`tree`
    /// is then that chunk, format-spec §10.2).
    #[serde(skip)]
    pub one_chunk: bool,
}

/// The kind of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A byte stream.
    File,
    /// A directory (its content is the items under it).
    Dir,
    /// A symbolic link.
    Symlink,
}

/// Which signers a reader accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any key whose signature verifies (the repository names no trusted keys).
    AnyValidSignature,
    /// Only these keys.
    Keys(Vec<PublicKey>),
}

impl Trust {
    /// Whether `key` may sign snapshots.
    pub fn accepts(&self, key: &PublicKey) -> bool {
        match self {
            Trust::AnyValidSignature => true,
            Trust::Keys(keys) => keys.contains(key),
        }
    }
}

/// A manifest whose signature and trust were checked.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Who signed it.
    pub signer: PublicKey,
    /// What it holds.
    pub manifest: Manifest,
    /// When the store it was read from received it: its object's
    /// `last_modified`, by the store's clock (not part of the manifest;
    /// `None` when not read from a store). See format-spec §12.6.
    pub seen: Option<Timestamp>,
}

fn signed_message(repository: &RepoId, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 32 + body.len());
    m.put_bytes(SIGNATURE_DOMAIN);
    m.put_bytes(repository.as_bytes());
    m.put_bytes(body);
    m
}

impl Manifest {
    /// When the backup that wrote this snapshot began reading: `started`,
    /// else `time`.
    pub fn started(&self) -> Timestamp {
        self.started.unwrap_or(self.time)
    }

    /// Checks what a reader relies on: version, item names and order, the
    /// fields each kind has, and that only directories hold items.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self.version {
            1 if self.root.is_none()
                && self.totals.is_none()
                && self.paths.is_empty()
                && self.parent.is_none() => {}
            1 => return Err("a version-1 manifest with version-2 fields".into()),
            2 => return self.validate_v2(),
            v => {
                return Err(format!(
                    "manifest version {v} (this cairn reads 1 and {MANIFEST_VERSION})"
                ));
            }
        }
        if self
            .items
            .iter()
            .try_fold(0u64, |total, i| total.checked_add(i.len))
            .is_none()
        {
            return Err("the items' lengths add up to more than 2^64 bytes".into());
        }
        let mut previous: Option<&str> = None;
        for item in &self.items {
            validate_item_name(&item.name)?;
            if previous.is_some_and(|p| p >= item.name.as_str()) {
                return Err(format!("items not in strict name order at {:?}", item.name));
            }
            previous = Some(&item.name);
            let file = item.kind == ItemKind::File;
            if file != item.tree.is_some() || file != item.chunks.is_some() {
                return Err(format!(
                    "item {:?}: a file needs a tree and a chunk count, nothing else has them",
                    item.name
                ));
            }
            if !file && (item.len != 0 || item.chunker.is_some()) {
                return Err(format!("item {:?}: only files have content", item.name));
            }
            if (item.kind == ItemKind::Symlink) != item.target.is_some() {
                return Err(format!(
                    "item {:?}: a symlink needs a target, nothing else has one",
                    item.name
                ));
            }
        }
        check_holders(&self.items)
    }

    fn validate_v2(&self) -> std::result::Result<(), String> {
        if !self.items.is_empty() || self.root.is_none() || self.totals.is_none() {
            return Err("a version-2 manifest needs a root and totals, and lists no items".into());
        }
        for (i, p) in self.paths.iter().enumerate() {
            crate::format::dir::check_name(p.as_bytes())?;
            if i > 0 && self.paths[i - 1] >= *p {
                return Err(format!("paths not in strict order at {p:?}"));
            }
        }
        Ok(())
    }

    /// Encodes and signs.
    pub fn encode_signed(&self, key: &SecretKey) -> Result<(SnapshotId, Vec<u8>)> {
        self.validate().map_err(Error::invalid)?;
        let body = serde_json::to_vec(self).map_err(|e| Error::invalid(e.to_string()))?;
        if body.len() > MAX_BODY_LEN as usize {
            return Err(Error::invalid(format!(
                "manifest of {} bytes exceeds the {MAX_BODY_LEN}-byte limit (too many items)",
                body.len()
            )));
        }
        let signature = key.sign(&signed_message(&self.repository, &body));
        let mut out = Vec::with_capacity(body.len() + 108);
        out.put_bytes(&MANIFEST_MAGIC);
        out.put_u32(len_u32(body.len()));
        out.put_bytes(&body);
        out.put_bytes(key.public().as_bytes());
        out.put_bytes(&signature);
        Ok((SnapshotId::of(&out), out))
    }

    /// Index of the item called `name`.
    pub fn item(&self, name: &str) -> Option<&Item> {
        self.items
            .binary_search_by(|i| i.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.items[i])
    }

    /// The snapshot's name, for grouping: its items' top-level names, sorted
    /// and joined with commas (`couchdb,postgres.sql`).
    pub fn name(&self) -> String {
        if self.version >= 2 {
            return self.paths.join(",");
        }
        let mut tops: Vec<&str> = self
            .items
            .iter()
            .map(|i| i.name.split('/').next().unwrap_or_default())
            .collect();
        tops.dedup(); // items are sorted by name, so equal tops are adjacent
        tops.join(",")
    }

    /// Entries: files, directories and the rest (version 1: items).
    pub fn entry_count(&self) -> u64 {
        match self.totals {
            Some(t) => t.files.saturating_add(t.dirs).saturating_add(t.other),
            None => self.items.len() as u64,
        }
    }

    /// Total content bytes.
    pub fn total_len(&self) -> u64 {
        if let Some(t) = self.totals {
            return t.bytes;
        }
        // Checked at decode (`validate`); saturating for manifests built in memory.
        self.items.iter().fold(0u64, |t, i| t.saturating_add(i.len))
    }
}

/// Decodes a manifest object named `expected`, checking hash, signature, trust
/// and repository.
pub fn decode_manifest(
    bytes: &[u8],
    expected: SnapshotId,
    repository: &RepoId,
    trust: &Trust,
) -> Result<Snapshot> {
    let object = format!("snapshot {expected}");
    let actual = SnapshotId::of(bytes);
    if actual != expected {
        return Err(Error::corrupt(&object, format!("content hash is {actual}")));
    }
    let bad = |d: String| Error::corrupt(&object, d);
    let mut r = Reader::new(bytes);
    if r.array::<8>().map_err(|e| bad(e.to_string()))? != MANIFEST_MAGIC {
        return Err(bad("not a snapshot manifest (magic)".into()));
    }
    let body_len = r.u32().map_err(|e| bad(e.to_string()))?;
    if body_len > MAX_BODY_LEN || r.remaining() != body_len as usize + 96 {
        return Err(bad(format!(
            "body length {body_len} does not fit an object of {} bytes",
            bytes.len()
        )));
    }
    let body = r.bytes(body_len as usize).map_err(|e| bad(e.to_string()))?;
    let key_bytes: [u8; 32] = r.array().map_err(|e| bad(e.to_string()))?;
    let signature: [u8; 64] = r.array().map_err(|e| bad(e.to_string()))?;
    let signer = PublicKey::from_bytes(&key_bytes).map_err(|_| Error::BadSignature {
        snapshot: expected.to_hex(),
        detail: "the signer field is not a valid public key".into(),
    })?;
    if !signer.verify_strict(&signed_message(repository, body), &signature) {
        return Err(Error::BadSignature {
            snapshot: expected.to_hex(),
            detail: format!(
                "the signature by {signer} does not verify over this content for repository {}",
                repository.short()
            ),
        });
    }
    if !trust.accepts(&signer) {
        return Err(Error::UntrustedKey {
            snapshot: expected.to_hex(),
            key: signer.to_string(),
        });
    }
    let manifest: Manifest = serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
    if manifest.repository != *repository {
        return Err(bad(format!(
            "belongs to repository {}",
            manifest.repository
        )));
    }
    manifest.validate().map_err(bad)?;
    Ok(Snapshot {
        id: expected,
        signer,
        manifest,
        seen: None,
    })
}

/// Checks that no item lies below an item that is not a directory (a
/// symlink `s` and an item `s/x` would make a restore write through the
/// link). `items` are in strict name order, so the items below `s` (those
/// starting with `s/`) sort after it, in one run that a binary search
/// finds: O(n log n) comparisons, however deep the names (a lookup per
/// `/` of every name cost a signer's 4096-byte names seconds per manifest).
fn check_holders(items: &[Item]) -> std::result::Result<(), String> {
    for (at, item) in items.iter().enumerate() {
        if item.kind == ItemKind::Dir {
            continue;
        }
        let prefix = format!("{}/", item.name);
        let rest = &items[at + 1..];
        let first = rest.partition_point(|i| i.name.as_str() < prefix.as_str());
        if let Some(below) = rest.get(first)
            && below.name.starts_with(&prefix)
        {
            return Err(format!(
                "item {:?} lies below item {:?}, a {}: only a directory can hold items",
                below.name,
                item.name,
                item.kind.noun()
            ));
        }
    }
    Ok(())
}

impl ItemKind {
    /// `file`, `directory` or `symlink`.
    pub fn noun(self) -> &'static str {
        match self {
            ItemKind::File => "file",
            ItemKind::Dir => "directory",
            ItemKind::Symlink => "symlink",
        }
    }
}

/// Checks an item name: a relative path of plain components joined by `/`.
pub fn validate_item_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 4096
        && !name.contains('\0')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "item name {name:?} is not a relative path of plain components (no `..`, `.`, empty parts, leading `/` or backslashes)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(repository: RepoId) -> Manifest {
        Manifest {
            version: 1,
            repository,
            time: "2026-11-21T02:00:00Z".parse().unwrap(),
            host: "node4".into(),
            tags: vec!["nightly".into()],
            source: SourceInfo {
                kind: SourceKind::Stdin,
                command: None,
                exit_status: None,
                url: None,
            },
            paths: vec![],
            started: None,
            parent: None,
            root: None,
            totals: None,
            items: vec![Item {
                name: "couchdb/lms.json".into(),
                kind: ItemKind::File,
                len: 5,
                tree: Some(BlobId::of(b"tree")),
                chunks: Some(1),
                chunker: None,
                mode: None,
                mtime: None,
                target: None,
                one_chunk: false,
            }],
        }
    }

    #[test]
    fn signed_manifests_round_trip_and_bind_the_repository() {
        let repo = RepoId([9; 32]);
        let key = SecretKey::from_seed(&[3; 32]);
        let m = sample(repo);
        let (id, bytes) = m.encode_signed(&key).unwrap();
        let s = decode_manifest(&bytes, id, &repo, &Trust::AnyValidSignature).unwrap();
        assert_eq!(s.manifest, m);
        assert_eq!(s.signer, key.public());

        let other_repo = RepoId([8; 32]);
        let err = decode_manifest(&bytes, id, &other_repo, &Trust::AnyValidSignature).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::BadSignature);
    }

    #[test]
    fn tampering_and_untrusted_signers_are_refused() {
        let repo = RepoId([9; 32]);
        let key = SecretKey::from_seed(&[3; 32]);
        let (_, bytes) = sample(repo).encode_signed(&key).unwrap();

        // Change the body and rename the object to its new hash: the id
        // matches, the signature does not.
        let mut tampered = bytes.clone();
        let at = tampered.windows(5).position(|w| w == b"node4").unwrap();
        tampered[at + 4] = b'5';
        let tid = SnapshotId::of(&tampered);
        let err = decode_manifest(&tampered, tid, &repo, &Trust::AnyValidSignature).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");

        // In place (the name no longer matches): corrupt.
        let err = decode_manifest(
            &tampered,
            SnapshotId::of(&bytes),
            &repo,
            &Trust::AnyValidSignature,
        )
        .unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Corrupt);

        let stranger = SecretKey::from_seed(&[4; 32]).public();
        let err = decode_manifest(
            &bytes,
            SnapshotId::of(&bytes),
            &repo,
            &Trust::Keys(vec![stranger]),
        )
        .unwrap_err();
        assert!(matches!(err, Error::UntrustedKey { .. }));
    }

    fn item(name: &str, kind: ItemKind) -> Item {
        let file = kind == ItemKind::File;
        Item {
            name: name.into(),
            kind,
            len: 0,
            tree: file.then(|| BlobId::of(b"tree")),
            chunks: file.then_some(0),
            chunker: None,
            mode: None,
            mtime: None,
            target: (kind == ItemKind::Symlink).then(|| "/victim/.ssh".into()),
            one_chunk: false,
        }
    }

    #[test]
    fn only_directories_hold_items() {
        let repo = RepoId([9; 32]);
        let key = SecretKey::from_seed(&[3; 32]);
        let with = |items: &[(&str, ItemKind)]| Manifest {
            items: items.iter().map(|(n, k)| item(n, *k)).collect(),
            ..sample(repo)
        };
        use ItemKind::{Dir, File, Symlink};
        for bad in [
            with(&[("s", Symlink), ("s/authorized_keys", Symlink)]),
            with(&[("s", Symlink), ("s/authorized_keys", File)]),
            with(&[("s", File), ("s/x/y", Dir)]),
            // `-` and `.` sort before `/`: siblings between do not hide `s`.
            with(&[("s", Symlink), ("s-b", Dir), ("s.c", File), ("s/x", File)]),
            with(&[("a", Dir), ("a/s", Symlink), ("a/s-", Dir), ("a/s/x", Dir)]),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains("lies below item"), "{e}");
            let e = bad.encode_signed(&key).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput, "{e}");
        }
        let e = with(&[("s", Symlink), ("s/k", File)])
            .validate()
            .unwrap_err();
        assert_eq!(
            e,
            "item \"s/k\" lies below item \"s\", a symlink: only a directory can hold items"
        );
        for good in [
            with(&[("a", Dir), ("a/b", Dir), ("a/b/c", File), ("a/s", Symlink)]),
            with(&[
                ("s", Symlink),
                ("s-b/x", File),
                ("s.c", File),
                ("t/x", File),
            ]),
            with(&[("x/implicit/dirs", File)]),
        ] {
            good.validate().unwrap();
        }
    }

    proptest::proptest! {
        /// The check (a binary search over the sorted names) agrees with comparing every pair.
        #[test]
        fn holder_check_matches_every_pair(
            picks in proptest::collection::vec(
                (proptest::collection::vec(0usize..5, 1..4), 0usize..3),
                0..24,
            )
        ) {
            const PARTS: [&str; 5] = ["a", "b", "a-b", "a.b", "-"];
            const KINDS: [ItemKind; 3] = [ItemKind::Dir, ItemKind::File, ItemKind::Symlink];
            let mut items: Vec<Item> = picks
                .iter()
                .map(|(parts, kind)| {
                    let name: Vec<&str> = parts.iter().map(|&p| PARTS[p]).collect();
                    item(&name.join("/"), KINDS[*kind])
                })
                .collect();
            items.sort_by(|a, b| a.name.cmp(&b.name));
            items.dedup_by(|a, b| a.name == b.name);
            let naive = items.iter().any(|holder| {
                holder.kind != ItemKind::Dir
                    && items
                        .iter()
                        .any(|i| i.name.starts_with(&format!("{}/", holder.name)))
            });
            proptest::prop_assert_eq!(check_holders(&items).is_err(), naive, "{:?}", items.iter().map(|i| (&i.name, i.kind)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn unsafe_item_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "./a",
            "a/",
            "a\\b",
        ] {
            assert!(validate_item_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "couchdb/lms.json", "volumes/x y/z.tar", "...dots"] {
            assert!(validate_item_name(good).is_ok(), "{good:?}");
        }
    }
}
