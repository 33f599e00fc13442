//! Directory trees (format v2): a snapshot's files as deduplicated blobs.
//!
//! A directory is stored as one or more *directory nodes*, blobs like
//! chunks and chunk-list nodes. A level-0 node lists entries (a file, a
//! subdirectory, a symlink, ...) in strictly increasing bytewise name order,
//! each with its metadata and what it points to: a file the root of its
//! chunk list ([`crate::format::tree`]), a subdirectory the root of its own
//! directory tree. A directory too large for one node is split where the
//! content says (like chunk lists), and level-n nodes list level-(n-1)
//! nodes with the first name beneath each, so a lookup by name reads one
//! node per level. Equal directories give equal blobs, so an unchanged
//! directory costs nothing to store and nothing to compare.
//!
//! ```text
//! node  = "CAIRNDR\x01" | level u8 | count u32 | count × (entry at level 0 | child above)
//! child = id [32] | entries beneath u64 | first name: len u16 | bytes
//! entry = name: len u16 | bytes | kind u8 | flags u8
//!         | mode u32                                   (flag MODE)
//!         | uid u32 | gid u32 | user: len u8 | bytes | group: len u8 | bytes   (flag OWNER)
//!         | mtime: secs i64 | nanos u32                (flag MTIME)
//!         | ctime: secs i64 | nanos u32 | inode u64    (flag CHANGE)
//!         | size u64
//!         | link group u64                             (flag LINK)
//!         | kind's part: file: root [32] | chunks u64 | chunker [14]
//!                        dir: tree [32]    symlink: target: len u16 | bytes
//!                        char/block device: rdev u64   fifo: nothing
//!         | xattrs: count u16 | count × (name: len u8 | bytes | value: len u32 | bytes)  (flag XATTRS)
//! ```
//! format-spec §10.2 is the normative description.

use crate::error::{Error, Result};
use crate::format::chunker::{ChunkerAlgorithm, ChunkerParams};
use crate::format::tree::EncodedNode;
use crate::format::wire::{Put, Reader, len_u32};
use crate::id::BlobId;

/// First bytes of every directory node.
pub const DIR_MAGIC: [u8; 8] = *b"CAIRNDR\x01";
/// The most entries (level 0) or children (above) in one node.
pub const MAX_NODE_COUNT: u32 = 65536;
/// The largest node a reader accepts.
pub const MAX_NODE_LEN: usize = 16 << 20;
/// The deepest level of one directory's node tree.
pub const MAX_DIR_LEVEL: u8 = 8;
/// The longest name of an entry.
pub const MAX_NAME_LEN: usize = 1024;
/// The longest symlink target.
pub const MAX_TARGET_LEN: usize = 4096;
/// The largest extended attribute value (Linux's `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE_LEN: usize = 64 << 10;
/// The largest encoded entry; a writer drops extended attributes beyond it.
pub const MAX_ENTRY_LEN: usize = 1 << 20;

/// Entry flags: which optional fields follow.
pub mod flags {
    /// `mode` follows.
    pub const MODE: u8 = 1;
    /// Owner (`uid`, `gid`, names) follows.
    pub const OWNER: u8 = 2;
    /// `mtime` follows.
    pub const MTIME: u8 = 4;
    /// `ctime` and `inode` follow (for change detection).
    pub const CHANGE: u8 = 8;
    /// A hard-link group follows.
    pub const LINK: u8 = 16;
    /// Extended attributes follow.
    pub const XATTRS: u8 = 32;
    /// The file had fewer blocks allocated than its size (holes): a restore
    /// leaves runs of zeros as holes.
    pub const SPARSE: u8 = 64;
    /// The file is one chunk, and `root` names the chunk itself (no
    /// chunk-list node): most files of a volume are this small.
    pub const ONE_CHUNK: u8 = 128;
    /// Every defined bit.
    pub const ALL: u8 = 255;
}

/// A time: seconds since the Unix epoch (may be negative) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time {
    /// Whole seconds.
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

impl Time {
    /// As a `jiff` timestamp, if in its range.
    pub fn to_timestamp(self) -> Option<jiff::Timestamp> {
        jiff::Timestamp::new(self.secs, i32::try_from(self.nanos).ok()?).ok()
    }

    /// From a `jiff` timestamp.
    pub fn from_timestamp(t: jiff::Timestamp) -> Time {
        let secs = t.as_second();
        let nanos = t.subsec_nanosecond();
        // jiff gives a negative fraction for times before the epoch.
        if nanos < 0 {
            Time {
                secs: secs - 1,
                nanos: (nanos + 1_000_000_000) as u32,
            }
        } else {
            Time {
                secs,
                nanos: nanos as u32,
            }
        }
    }
}

/// Who owns an entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// User name, empty when unknown (restore then uses `uid`).
    pub user: Vec<u8>,
    /// Group name, empty when unknown.
    pub group: Vec<u8>,
}

/// What a backup compares to decide a file is unchanged (with `size` and `mtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// Status change time.
    pub ctime: Time,
    /// Inode number.
    pub inode: u64,
}

/// An extended attribute (POSIX ACLs are `system.posix_acl_*` attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// Its name, such as `user.comment`.
    pub name: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// What an entry is, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file: the root of its chunk list.
    File {
        /// Root of the chunk list (format-spec §10).
        root: BlobId,
        /// Number of chunks.
        chunks: u64,
        /// How the content was cut; the next backup cuts the same way.
        chunker: ChunkerParams,
    },
    /// A directory: the root of its directory tree.
    Dir {
        /// Root node of the directory.
        tree: BlobId,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, as bytes.
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
}

/// The kind byte of each [`Node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A regular file.
    File = 0,
    /// A directory.
    Dir = 1,
    /// A symbolic link.
    Symlink = 2,
    /// A named pipe.
    Fifo = 3,
    /// A character device.
    CharDevice = 4,
    /// A block device.
    BlockDevice = 5,
}

impl Kind {
    /// `file`, `directory`, ...
    pub fn noun(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            3 => Kind::Fifo,
            4 => Kind::CharDevice,
            5 => Kind::BlockDevice,
            _ => return None,
        })
    }
}

impl Node {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Node::File { .. } => Kind::File,
            Node::Dir { .. } => Kind::Dir,
            Node::Symlink { .. } => Kind::Symlink,
            Node::Fifo => Kind::Fifo,
            Node::CharDevice { .. } => Kind::CharDevice,
            Node::BlockDevice { .. } => Kind::BlockDevice,
        }
    }
}

/// One name in a directory, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// One path component, as bytes (any but `/` and NUL; not `.` or `..`).
    pub name: Vec<u8>,
    /// What it is.
    pub node: Node,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: Option<u32>,
    /// Owner.
    pub owner: Option<Owner>,
    /// Modification time.
    pub mtime: Option<Time>,
    /// Status change time and inode, for change detection.
    pub change: Option<Change>,
    /// Content length (files; 0 for every other kind).
    pub size: u64,
    /// Entries of one snapshot with the same non-zero group are one file
    /// (hard links).
    pub link_group: Option<u64>,
    /// The file has holes.
    pub sparse: bool,
    /// The file is one chunk and its node's `root` is that chunk's id.
    pub one_chunk: bool,
    /// Extended attributes, in strictly increasing name order.
    pub xattrs: Vec<Xattr>,
}

impl DirEntry {
    /// An entry with no metadata.
    pub fn bare(name: impl Into<Vec<u8>>, node: Node) -> DirEntry {
        DirEntry {
            name: name.into(),
            node,
            mode: None,
            owner: None,
            mtime: None,
            change: None,
            size: 0,
            link_group: None,
            sparse: false,
            one_chunk: false,
            xattrs: Vec::new(),
        }
    }

    /// Its name for messages (lossy UTF-8).
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        for (set, bit) in [
            (self.mode.is_some(), flags::MODE),
            (self.owner.is_some(), flags::OWNER),
            (self.mtime.is_some(), flags::MTIME),
            (self.change.is_some(), flags::CHANGE),
            (self.link_group.is_some(), flags::LINK),
            (!self.xattrs.is_empty(), flags::XATTRS),
            (self.sparse, flags::SPARSE),
            (self.one_chunk, flags::ONE_CHUNK),
        ] {
            if set {
                f |= bit;
            }
        }
        f
    }

    /// Appends the entry's bytes; the entry must be valid ([`DirEntry::check`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u16_bytes(out, &self.name);
        out.put_u8(self.node.kind() as u8);
        out.put_u8(self.flags());
        if let Some(mode) = self.mode {
            out.put_u32(mode);
        }
        if let Some(o) = &self.owner {
            out.put_u32(o.uid);
            out.put_u32(o.gid);
            put_u8_bytes(out, &o.user);
            put_u8_bytes(out, &o.group);
        }
        if let Some(t) = self.mtime {
            put_time(out, t);
        }
        if let Some(c) = self.change {
            put_time(out, c.ctime);
            out.put_u64(c.inode);
        }
        out.put_u64(self.size);
        if let Some(g) = self.link_group {
            out.put_u64(g);
        }
        match &self.node {
            Node::File {
                root,
                chunks,
                chunker,
            } => {
                out.put_bytes(root.as_bytes());
                out.put_u64(*chunks);
                put_chunker(out, chunker);
            }
            Node::Dir { tree } => out.put_bytes(tree.as_bytes()),
            Node::Symlink { target } => put_u16_bytes(out, target),
            Node::Fifo => {}
            Node::CharDevice { rdev } | Node::BlockDevice { rdev } => out.put_u64(*rdev),
        }
        if !self.xattrs.is_empty() {
            out.extend_from_slice(
                &u16::try_from(self.xattrs.len())
                    .unwrap_or(u16::MAX)
                    .to_le_bytes(),
            );
            for x in &self.xattrs {
                put_u8_bytes(out, &x.name);
                out.put_u32(len_u32(x.value.len()));
                out.put_bytes(&x.value);
            }
        }
    }

    /// Checks what the encoding cannot express and what readers rely on.
    pub fn check(&self) -> std::result::Result<(), String> {
        check_name(&self.name)?;
        let name = self.display_name();
        if self.one_chunk && !matches!(self.node, Node::File { chunks: 1, .. }) {
            return Err(format!(
                "entry {name:?}: only a file of exactly one chunk names it directly"
            ));
        }
        if self.node.kind() != Kind::File && (self.size != 0 || self.sparse) {
            return Err(format!("entry {name:?}: only files have a size or holes"));
        }
        if let Some(mode) = self.mode
            && mode > 0o7777
        {
            return Err(format!(
                "entry {name:?}: mode {mode:o} has bits beyond 0o7777"
            ));
        }
        if let Some(o) = &self.owner
            && (o.user.len() > 255 || o.group.len() > 255)
        {
            return Err(format!("entry {name:?}: owner names over 255 bytes"));
        }
        for t in [self.mtime, self.change.map(|c| c.ctime)]
            .into_iter()
            .flatten()
        {
            if t.nanos >= 1_000_000_000 {
                return Err(format!("entry {name:?}: {} nanoseconds", t.nanos));
            }
        }
        if self.link_group == Some(0) {
            return Err(format!("entry {name:?}: link group 0"));
        }
        if self.link_group.is_some() && self.node.kind() == Kind::Dir {
            return Err(format!("entry {name:?}: a directory cannot be a hard link"));
        }
        match &self.node {
            Node::Symlink { target }
                if target.is_empty() || target.len() > MAX_TARGET_LEN || target.contains(&0) =>
            {
                return Err(format!(
                    "entry {name:?}: symlink target of {} bytes (1 to {MAX_TARGET_LEN}, no NUL)",
                    target.len()
                ));
            }
            Node::File { chunker, .. } if chunker.validate().is_err() => {
                return Err(format!("entry {name:?}: chunker parameters {chunker:?}"));
            }
            _ => {}
        }
        if self.xattrs.len() > usize::from(u16::MAX) {
            return Err(format!(
                "entry {name:?}: {} extended attributes",
                self.xattrs.len()
            ));
        }
        let mut previous: Option<&[u8]> = None;
        for x in &self.xattrs {
            if x.name.is_empty() || x.name.len() > 255 || x.name.contains(&0) {
                return Err(format!("entry {name:?}: an extended attribute's name"));
            }
            if previous.is_some_and(|p| p >= x.name.as_slice()) {
                return Err(format!(
                    "entry {name:?}: extended attributes not in strict name order"
                ));
            }
            previous = Some(&x.name);
            if x.value.len() > MAX_XATTR_VALUE_LEN {
                return Err(format!(
                    "entry {name:?}: extended attribute value of {} bytes",
                    x.value.len()
                ));
            }
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> std::result::Result<DirEntry, String> {
        let short = |e: crate::format::wire::Short| e.to_string();
        let name = u16_bytes(r)?.to_vec();
        let kind_byte = r.u8().map_err(short)?;
        let kind = Kind::from_byte(kind_byte).ok_or_else(|| format!("kind {kind_byte}"))?;
        let f = r.u8().map_err(short)?;
        let mode = (f & flags::MODE != 0)
            .then(|| r.u32())
            .transpose()
            .map_err(short)?;
        let owner = if f & flags::OWNER != 0 {
            Some(Owner {
                uid: r.u32().map_err(short)?,
                gid: r.u32().map_err(short)?,
                user: u8_bytes(r)?.to_vec(),
                group: u8_bytes(r)?.to_vec(),
            })
        } else {
            None
        };
        let mtime = (f & flags::MTIME != 0).then(|| time(r)).transpose()?;
        let change = if f & flags::CHANGE != 0 {
            Some(Change {
                ctime: time(r)?,
                inode: r.u64().map_err(short)?,
            })
        } else {
            None
        };
        let size = r.u64().map_err(short)?;
        let link_group = (f & flags::LINK != 0)
            .then(|| r.u64())
            .transpose()
            .map_err(short)?;
        let node = match kind {
            Kind::File => Node::File {
                root: BlobId(r.id().map_err(short)?),
                chunks: r.u64().map_err(short)?,
                chunker: chunker(r)?,
            },
            Kind::Dir => Node::Dir {
                tree: BlobId(r.id().map_err(short)?),
            },
            Kind::Symlink => Node::Symlink {
                target: u16_bytes(r)?.to_vec(),
            },
            Kind::Fifo => Node::Fifo,
            Kind::CharDevice => Node::CharDevice {
                rdev: r.u64().map_err(short)?,
            },
            Kind::BlockDevice => Node::BlockDevice {
                rdev: r.u64().map_err(short)?,
            },
        };
        let mut xattrs = Vec::new();
        if f & flags::XATTRS != 0 {
            let count = u16::from_le_bytes(r.array().map_err(short)?);
            if count == 0 {
                return Err("the extended-attribute flag with no attributes".into());
            }
            for _ in 0..count {
                let name = u8_bytes(r)?.to_vec();
                let len = r.u32().map_err(short)? as usize;
                if len > MAX_XATTR_VALUE_LEN {
                    return Err(format!("extended attribute value of {len} bytes"));
                }
                xattrs.push(Xattr {
                    name,
                    value: r.bytes(len).map_err(short)?.to_vec(),
                });
            }
        }
        let entry = DirEntry {
            name,
            node,
            mode,
            owner,
            mtime,
            change,
            size,
            link_group,
            sparse: f & flags::SPARSE != 0,
            one_chunk: f & flags::ONE_CHUNK != 0,
            xattrs,
        };
        entry.check()?;
        Ok(entry)
    }
}

/// Checks one name: 1 to [`MAX_NAME_LEN`] bytes, no `/` or NUL, not `.` or `..`.
pub fn check_name(name: &[u8]) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.contains(&b'/')
        || name.contains(&0)
        || name == b"."
        || name == b".."
    {
        return Err(format!(
            "entry name {:?} is not one plain path component",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

/// A level-n node's reference to a level-(n-1) node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirChild {
    /// The child node.
    pub id: BlobId,
    /// Entries beneath it.
    pub entries: u64,
    /// The name of the first entry beneath it.
    pub first: Vec<u8>,
}

/// A decoded directory node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirNode {
    /// Level 0: entries, in strictly increasing name order.
    Entries(Vec<DirEntry>),
    /// Level ≥ 1: children, in order.
    Children {
        /// This node's level.
        level: u8,
        /// Its children.
        children: Vec<DirChild>,
    },
}

impl DirNode {
    /// Its level.
    pub fn level(&self) -> u8 {
        match self {
            DirNode::Entries(_) => 0,
            DirNode::Children { level, .. } => *level,
        }
    }

    /// Entries beneath it.
    pub fn entry_count(&self) -> Option<u64> {
        match self {
            DirNode::Entries(e) => Some(e.len() as u64),
            DirNode::Children { children, .. } => children
                .iter()
                .try_fold(0u64, |acc, c| acc.checked_add(c.entries)),
        }
    }

    /// The name of its first entry (None for an empty directory).
    pub fn first_name(&self) -> Option<&[u8]> {
        match self {
            DirNode::Entries(e) => e.first().map(|e| e.name.as_slice()),
            DirNode::Children { children, .. } => children.first().map(|c| c.first.as_slice()),
        }
    }

    /// The node's bytes; entries must be valid.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_bytes(&DIR_MAGIC);
        match self {
            DirNode::Entries(entries) => {
                out.put_u8(0);
                out.put_u32(len_u32(entries.len()));
                for e in entries {
                    e.encode_into(&mut out);
                }
            }
            DirNode::Children { level, children } => {
                out.put_u8(*level);
                out.put_u32(len_u32(children.len()));
                for c in children {
                    put_child(&mut out, c);
                }
            }
        }
        out
    }

    /// Parses and checks a node; `object` names it in errors. Checks every
    /// entry, and that names (entries, or children's first names) strictly
    /// increase.
    pub fn decode(bytes: &[u8], object: &str) -> Result<DirNode> {
        Self::decode_inner(bytes)
            .map_err(|d| Error::corrupt(object, format!("directory node: {d}")))
    }

    fn decode_inner(bytes: &[u8]) -> std::result::Result<DirNode, String> {
        let short = |e: crate::format::wire::Short| e.to_string();
        if bytes.len() > MAX_NODE_LEN {
            return Err(format!("{} bytes, more than {MAX_NODE_LEN}", bytes.len()));
        }
        let mut r = Reader::new(bytes);
        if r.array::<8>().map_err(short)? != DIR_MAGIC {
            return Err("magic".into());
        }
        let level = r.u8().map_err(short)?;
        let count = r.u32().map_err(short)?;
        if level > MAX_DIR_LEVEL || count > MAX_NODE_COUNT || (level > 0 && count == 0) {
            return Err(format!("level {level} with {count} entries"));
        }
        let node = if level == 0 {
            let mut entries: Vec<DirEntry> = Vec::with_capacity(count.min(4096) as usize);
            for _ in 0..count {
                let e = DirEntry::decode(&mut r)?;
                if let Some(p) = entries.last()
                    && p.name >= e.name
                {
                    return Err(format!(
                        "entries not in strict name order at {:?}",
                        e.display_name()
                    ));
                }
                entries.push(e);
            }
            DirNode::Entries(entries)
        } else {
            let mut children: Vec<DirChild> = Vec::with_capacity(count.min(4096) as usize);
            for _ in 0..count {
                let c = DirChild {
                    id: BlobId(r.id().map_err(short)?),
                    entries: r.u64().map_err(short)?,
                    first: u16_bytes(&mut r)?.to_vec(),
                };
                check_name(&c.first)?;
                if c.entries == 0 {
                    return Err("a child with no entries".into());
                }
                if let Some(p) = children.last()
                    && p.first >= c.first
                {
                    return Err("children not in strict name order".into());
                }
                children.push(c);
            }
            DirNode::Children { level, children }
        };
        if r.remaining() != 0 {
            return Err(format!("{} bytes after the last entry", r.remaining()));
        }
        if node.entry_count().is_none() {
            return Err("entry counts overflow".into());
        }
        Ok(node)
    }
}

fn put_child(out: &mut Vec<u8>, c: &DirChild) {
    out.put_bytes(c.id.as_bytes());
    out.put_u64(c.entries);
    put_u16_bytes(out, &c.first);
}

fn put_u16_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths are checked first (`DirEntry::check`, `check_name`).
    out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.put_bytes(b);
}

fn put_u8_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u8(u8::try_from(b.len()).unwrap_or(u8::MAX));
    out.put_bytes(b);
}

fn put_time(out: &mut Vec<u8>, t: Time) {
    out.put_u64(t.secs as u64);
    out.put_u32(t.nanos);
}

fn put_chunker(out: &mut Vec<u8>, c: &ChunkerParams) {
    out.put_u8(match c.algorithm {
        ChunkerAlgorithm::FastCdc2020 => 1,
    });
    out.put_u32(c.min_len);
    out.put_u32(c.avg_len);
    out.put_u32(c.max_len);
    out.put_u8(c.normalization);
}

fn u16_bytes<'a>(r: &mut Reader<'a>) -> std::result::Result<&'a [u8], String> {
    let len = u16::from_le_bytes(r.array().map_err(|e| e.to_string())?);
    r.bytes(usize::from(len)).map_err(|e| e.to_string())
}

fn u8_bytes<'a>(r: &mut Reader<'a>) -> std::result::Result<&'a [u8], String> {
    let len = r.u8().map_err(|e| e.to_string())?;
    r.bytes(usize::from(len)).map_err(|e| e.to_string())
}

fn time(r: &mut Reader<'_>) -> std::result::Result<Time, String> {
    let secs = r.u64().map_err(|e| e.to_string())? as i64;
    let nanos = r.u32().map_err(|e| e.to_string())?;
    Ok(Time { secs, nanos })
}

fn chunker(r: &mut Reader<'_>) -> std::result::Result<ChunkerParams, String> {
    let short = |e: crate::format::wire::Short| e.to_string();
    let algorithm = match r.u8().map_err(short)? {
        1 => ChunkerAlgorithm::FastCdc2020,
        a => return Err(format!("chunker algorithm {a}")),
    };
    Ok(ChunkerParams {
        algorithm,
        min_len: r.u32().map_err(short)?,
        avg_len: r.u32().map_err(short)?,
        max_len: r.u32().map_err(short)?,
        normalization: r.u8().map_err(short)?,
    })
}

/// Where the writer splits a directory (not part of the format: readers
/// accept any split). Level 0 ends a node after an entry whose encoding's
/// BLAKE3 ends a group, level ≥ 1 after a child whose id does.
#[derive(Debug, Clone, Copy)]
struct Split {
    avg: u32,
    min: usize,
    max: usize,
}

const SPLIT_ENTRIES: Split = Split {
    avg: 512,
    min: 128,
    max: 8192,
};
const SPLIT_CHILDREN: Split = Split {
    avg: 64,
    min: 16,
    max: 4096,
};
/// A level-0 node closes once its entries take this many bytes.
const SPLIT_BYTES: usize = 4 << 20;

impl Split {
    fn ends(&self, hash: &[u8; 32], count: usize) -> bool {
        let word = u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]);
        count >= self.max || (count >= self.min && word % self.avg == self.avg - 1)
    }
}

/// Builds one directory's nodes from its entries in name order, emitting
/// nodes as they fill; memory holds one open node per level.
#[derive(Debug, Default)]
pub struct DirBuilder {
    /// The open level-0 node: its encoded entries, their count and first name.
    bytes: Vec<u8>,
    count: usize,
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
    /// Open nodes above level 0 (index 0 is level 1).
    upper: Vec<Vec<DirChild>>,
    /// Nodes emitted per level, and the last one's child record.
    emitted: Vec<u64>,
    last_child: Vec<Option<DirChild>>,
    entries: u64,
}

impl DirBuilder {
    /// A builder for an empty directory.
    pub fn new() -> DirBuilder {
        DirBuilder::default()
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Adds the next entry (names strictly increasing); appends the nodes
    /// that completed to `out`.
    pub fn push(&mut self, entry: &DirEntry, out: &mut Vec<EncodedNode>) -> Result<()> {
        entry.check().map_err(Error::invalid)?;
        if self
            .last
            .as_deref()
            .is_some_and(|l| l >= entry.name.as_slice())
        {
            return Err(Error::invalid(format!(
                "directory entries out of order at {:?}",
                entry.display_name()
            )));
        }
        let start = self.bytes.len();
        entry.encode_into(&mut self.bytes);
        if self.bytes.len() - start > MAX_ENTRY_LEN {
            self.bytes.truncate(start);
            return Err(Error::invalid(format!(
                "entry {:?} takes more than {MAX_ENTRY_LEN} bytes",
                entry.display_name()
            )));
        }
        let hash = *blake3::hash(&self.bytes[start..]).as_bytes();
        self.count += 1;
        self.entries += 1;
        if self.first.is_none() {
            self.first = Some(entry.name.clone());
        }
        self.last = Some(entry.name.clone());
        if SPLIT_ENTRIES.ends(&hash, self.count) || self.bytes.len() >= SPLIT_BYTES {
            self.close(0, out);
        }
        Ok(())
    }

    fn ensure(&mut self, level: usize) {
        while self.emitted.len() <= level {
            self.emitted.push(0);
            self.last_child.push(None);
        }
        while self.upper.len() < level {
            self.upper.push(Vec::new());
        }
    }

    fn close(&mut self, level: usize, out: &mut Vec<EncodedNode>) {
        self.ensure(level);
        let (bytes, child_first, entries) = if level == 0 {
            let mut b = Vec::with_capacity(13 + self.bytes.len());
            b.put_bytes(&DIR_MAGIC);
            b.put_u8(0);
            b.put_u32(len_u32(self.count));
            b.put_bytes(&self.bytes);
            self.bytes.clear();
            let n = std::mem::take(&mut self.count) as u64;
            (b, self.first.take(), n)
        } else {
            let children = std::mem::take(&mut self.upper[level - 1]);
            let entries = children.iter().map(|c| c.entries).sum();
            let first = children.first().map(|c| c.first.clone());
            let node = DirNode::Children {
                level: u8::try_from(level).unwrap_or(u8::MAX),
                children,
            };
            (node.encode(), first, entries)
        };
        let id = BlobId::of(&bytes);
        out.push(EncodedNode { id, bytes });
        self.emitted[level] += 1;
        let child = DirChild {
            id,
            entries,
            first: child_first.unwrap_or_default(),
        };
        self.last_child[level] = Some(child.clone());
        if entries == 0 {
            return; // the empty directory's one node: nothing above it
        }
        self.ensure(level + 1);
        let open = &mut self.upper[level];
        open.push(child);
        let count = open.len();
        if SPLIT_CHILDREN.ends(id.as_bytes(), count) {
            self.close(level + 1, out);
        }
    }

    /// Finishes: appends the remaining nodes; returns the root's id and the
    /// number of entries.
    pub fn finish(mut self, out: &mut Vec<EncodedNode>) -> (BlobId, u64) {
        let mut level = 0;
        loop {
            self.ensure(level);
            let open = if level == 0 {
                self.count > 0
            } else {
                !self.upper[level - 1].is_empty()
            };
            if open || self.emitted[level] == 0 {
                self.close(level, out);
            }
            if self.emitted[level] == 1 {
                let root = self.last_child[level].as_ref().map(|c| c.id);
                return (root.unwrap_or(BlobId([0; 32])), self.entries);
            }
            level += 1;
        }
    }
}

/// Builds a directory's nodes at once: the reference form.
pub fn build_dir(entries: &[DirEntry]) -> Result<(BlobId, Vec<EncodedNode>)> {
    let mut b = DirBuilder::new();
    let mut nodes = Vec::new();
    for e in entries {
        b.push(e, &mut nodes)?;
    }
    let (root, _) = b.finish(&mut nodes);
    Ok((root, nodes))
}

/// Builds a whole snapshot tree from entries in tree order (pre-order,
/// each directory's entries by name, a directory's own entry before what it
/// holds): one [`DirBuilder`] per open directory.
#[derive(Debug)]
pub struct TreeAssembler {
    /// Open directories; `open[0]` is the root (no entry of its own).
    open: Vec<(Option<DirEntry>, DirBuilder)>,
    totals: crate::format::manifest::Totals,
}

impl Default for TreeAssembler {
    fn default() -> Self {
        TreeAssembler {
            open: vec![(None, DirBuilder::new())],
            totals: Default::default(),
        }
    }
}

impl TreeAssembler {
    /// An empty tree.
    pub fn new() -> TreeAssembler {
        TreeAssembler::default()
    }

    /// The depth the next entry may have at most (the open directories).
    pub fn depth(&self) -> usize {
        self.open.len() - 1
    }

    /// Adds `entry` at `depth` (0 = in the root). Directories deeper than
    /// `depth` are finished first; a directory's entry opens it (its
    /// `tree` is filled in when it is finished).
    pub fn push(
        &mut self,
        depth: usize,
        entry: DirEntry,
        out: &mut Vec<EncodedNode>,
    ) -> Result<()> {
        if depth > self.depth() {
            return Err(Error::invalid(format!(
                "entry {:?} at depth {depth} has no directory above it",
                entry.display_name()
            )));
        }
        while self.depth() > depth {
            self.close(out)?;
        }
        match &entry.node {
            Node::Dir { .. } => {
                self.totals.dirs += 1;
                self.open.push((Some(entry), DirBuilder::new()));
                Ok(())
            }
            other => {
                if let Node::File { .. } = other {
                    self.totals.files += 1;
                    self.totals.bytes = self.totals.bytes.saturating_add(entry.size);
                } else {
                    self.totals.other += 1;
                }
                self.top().push(&entry, out)
            }
        }
    }

    fn top(&mut self) -> &mut DirBuilder {
        let last = self.open.len() - 1;
        &mut self.open[last].1
    }

    fn close(&mut self, out: &mut Vec<EncodedNode>) -> Result<()> {
        let Some((Some(mut entry), builder)) = self.open.pop() else {
            return Err(Error::invalid("closing the root directory"));
        };
        let (tree, _) = builder.finish(out);
        entry.node = Node::Dir { tree };
        self.top().push(&entry, out)
    }

    /// Finishes every open directory; returns the root's id and the totals.
    pub fn finish(
        mut self,
        out: &mut Vec<EncodedNode>,
    ) -> Result<(BlobId, crate::format::manifest::Totals)> {
        while self.depth() > 0 {
            self.close(out)?;
        }
        let (_, root) = self.open.pop().unwrap_or_default();
        let (id, _) = root.finish(out);
        Ok((id, self.totals))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::IdMap;

    pub(crate) fn sample_file(name: &str, i: u64) -> DirEntry {
        DirEntry {
            mode: Some(0o644),
            owner: Some(Owner {
                uid: 1000,
                gid: 1000,
                user: b"edx".to_vec(),
                group: b"edx".to_vec(),
            }),
            mtime: Some(Time {
                secs: 1_700_000_000 + i as i64,
                nanos: 5,
            }),
            change: Some(Change {
                ctime: Time {
                    secs: 1_700_000_001,
                    nanos: 0,
                },
                inode: 42 + i,
            }),
            size: i,
            ..DirEntry::bare(
                name,
                Node::File {
                    root: BlobId::of(&i.to_le_bytes()),
                    chunks: 1,
                    chunker: ChunkerParams::DEFAULT,
                },
            )
        }
    }

    fn flatten(root: BlobId, nodes: &[EncodedNode]) -> Vec<DirEntry> {
        let by_id: IdMap<BlobId, DirNode> = nodes
            .iter()
            .map(|n| (n.id, DirNode::decode(&n.bytes, "d").unwrap()))
            .collect();
        fn walk(id: BlobId, by_id: &IdMap<BlobId, DirNode>, out: &mut Vec<DirEntry>) {
            match &by_id[&id] {
                DirNode::Entries(e) => out.extend(e.iter().cloned()),
                DirNode::Children { children, .. } => {
                    for c in children {
                        let before = out.len();
                        walk(c.id, by_id, out);
                        assert_eq!(out[before].name, c.first);
                        assert_eq!((out.len() - before) as u64, c.entries);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(root, &by_id, &mut out);
        out
    }

    #[test]
    fn every_kind_and_field_round_trips() {
        let entries = vec![
            DirEntry {
                xattrs: vec![
                    Xattr {
                        name: b"system.posix_acl_access".to_vec(),
                        value: vec![2, 0, 0, 0],
                    },
                    Xattr {
                        name: b"user.cairn".to_vec(),
                        value: b"yes".to_vec(),
                    },
                ],
                link_group: Some(7),
                sparse: true,
                ..sample_file("a", 3)
            },
            DirEntry::bare(b"b\xff".to_vec(), Node::BlockDevice { rdev: 0x0801 }),
            DirEntry::bare("c", Node::CharDevice { rdev: 0x0103 }),
            DirEntry {
                mode: Some(0o1777),
                ..DirEntry::bare(
                    "d",
                    Node::Dir {
                        tree: BlobId::of(b"x"),
                    },
                )
            },
            DirEntry::bare("f", Node::Fifo),
            DirEntry {
                mtime: Some(Time {
                    secs: -1,
                    nanos: 999_999_999,
                }),
                ..DirEntry::bare(
                    "s",
                    Node::Symlink {
                        target: b"../etc".to_vec(),
                    },
                )
            },
        ];
        let node = DirNode::Entries(entries.clone());
        let bytes = node.encode();
        assert_eq!(DirNode::decode(&bytes, "d").unwrap(), node);
        let (root, nodes) = build_dir(&entries).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(root, BlobId::of(&bytes));
    }

    #[test]
    fn the_empty_directory_is_one_node() {
        let (root, nodes) = build_dir(&[]).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].bytes, b"CAIRNDR\x01\x00\x00\x00\x00\x00");
        assert_eq!(root, nodes[0].id);
    }

    #[test]
    fn large_directories_split_and_flatten_back() {
        let entries: Vec<DirEntry> = (0..50_000u64)
            .map(|i| sample_file(&format!("f{i:06}"), i))
            .collect();
        let (root, nodes) = build_dir(&entries).unwrap();
        assert!(nodes.len() > 50, "{} nodes", nodes.len());
        assert_eq!(flatten(root, &nodes), entries);
        // One changed entry rewrites its node and the nodes above it.
        let mut changed = entries.clone();
        changed[25_000].size += 1;
        let (_, after) = build_dir(&changed).unwrap();
        let old: std::collections::HashSet<BlobId> = nodes.iter().map(|n| n.id).collect();
        let new = after.iter().filter(|n| !old.contains(&n.id)).count();
        assert!(new <= 4, "{new} nodes rewritten");
    }

    #[test]
    fn readers_refuse_what_writers_never_write() {
        let good = DirNode::Entries(vec![sample_file("a", 1), sample_file("b", 2)]).encode();
        DirNode::decode(&good, "d").unwrap();
        let unordered = DirNode::Entries(vec![sample_file("b", 1), sample_file("a", 2)]).encode();
        let dotdot = DirNode::Entries(vec![sample_file("..", 1)]).encode();
        let slash = DirNode::Entries(vec![sample_file("a/b", 1)]).encode();
        let mut trailing = good.clone();
        trailing.push(0);
        // ONE_CHUNK on a file of two chunks (the writer's check bypassed).
        let mut two = sample_file("a", 1);
        if let Node::File { chunks, .. } = &mut two.node {
            *chunks = 2;
        }
        two.one_chunk = true;
        let flag = DirNode::Entries(vec![two]).encode();
        for (bad, why) in [
            (unordered, "order"),
            (dotdot, "component"),
            (slash, "component"),
            (trailing, "after the last"),
            (flag, "exactly one chunk"),
            (good[..good.len() - 1].to_vec(), "truncated"),
        ] {
            let e = DirNode::decode(&bad, "d").unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        // Only files have a size.
        let mut sized = DirEntry::bare("d", Node::Fifo);
        sized.size = 1;
        assert!(build_dir(&[sized]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn splits_flatten_back(n in 0usize..3000, seed in 0u64..1000) {
            let entries: Vec<DirEntry> = (0..n as u64)
                .map(|i| sample_file(&format!("{seed}-{i:05}"), i ^ seed))
                .collect();
            let (root, nodes) = build_dir(&entries).unwrap();
            proptest::prop_assert_eq!(flatten(root, &nodes), entries);
        }
    }
}
