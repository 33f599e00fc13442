//! The file system's side of a directory entry's metadata (format v2):
//! what a backup reads from an inode into a [`DirEntry`] (kind, mode,
//! owner with names, times, hard-link group, holes, extended attributes)
//! and what a restore puts back (special files, hard links, extended
//! attributes and POSIX ACLs, owner, mode, times).
//!
//! Every name is one path component resolved relative to its parent
//! directory's descriptor, and nothing here follows a symlink in that last
//! component: a restore target keeps the promise of [`super::target`].
//! Where no descriptor of the entry itself is at hand (symlinks, FIFOs,
//! devices), extended attributes go through `/proc/self/fd/<dir>/<name>`
//! with the `l*xattr` calls (the parent's descriptor is followed, the name
//! is not) and the mode through an `O_PATH` descriptor checked not to be a
//! symlink.

// Backup and restore of format v2 call these; until they are wired in,
// only the tests do.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::format::chunker::ChunkerParams;
use crate::format::dir::{Change, DirEntry, Kind, MAX_XATTR_VALUE_LEN, Node, Owner, Time, Xattr};
use crate::id::BlobId;

// ---------------------------------------------------------------------------
// Capture (backup)
// ---------------------------------------------------------------------------

/// `name` in `dir`, not following a symlink.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The target of the symlink `name` in `dir`.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// The entry `name` as `st` describes it, or `None` for a socket (not
/// backed up; the caller warns). Everything but content is filled in: a
/// file's chunk list and a directory's tree are zero placeholders, a
/// symlink's target is empty ([`read_link_at`]), extended attributes are
/// empty ([`read_xattrs`]).
pub(crate) fn entry_from_stat(
    name: Vec<u8>,
    st: &Stat,
    names: &mut OwnerNames,
) -> Option<DirEntry> {
    let kind = FileType::from_raw_mode(st.st_mode);
    let node = placeholder_node(kind, st)?;
    let file = kind == FileType::RegularFile;
    let size = if file { nonneg(st.st_size) } else { 0 };
    let (uid, gid) = (st.st_uid, st.st_gid);
    Some(DirEntry {
        name,
        node,
        mode: Some(st.st_mode & 0o7777),
        owner: Some(Owner {
            uid,
            gid,
            user: names.user(uid),
            group: names.group(gid),
        }),
        mtime: Some(time(st.st_mtime, st.st_mtime_nsec)),
        change: Some(Change {
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            inode: widen(st.st_ino),
        }),
        size,
        link_group: link_group(st, kind),
        sparse: file && nonneg(st.st_blocks).saturating_mul(512) < size,
        one_chunk: false,
        xattrs: Vec::new(),
    })
}

/// The node of an entry of type `kind`, its content left to the caller.
fn placeholder_node(kind: FileType, st: &Stat) -> Option<Node> {
    let rdev = widen(st.st_rdev);
    Some(match kind {
        FileType::RegularFile => Node::File {
            root: BlobId([0; 32]),
            chunks: 0,
            chunker: ChunkerParams::DEFAULT,
        },
        FileType::Directory => Node::Dir {
            tree: BlobId([0; 32]),
        },
        FileType::Symlink => Node::Symlink { target: Vec::new() },
        FileType::Fifo => Node::Fifo,
        FileType::CharacterDevice => Node::CharDevice { rdev },
        FileType::BlockDevice => Node::BlockDevice { rdev },
        _ => return None,
    })
}

/// The hard-link group of a non-directory with more than one link: the
/// first 8 bytes of BLAKE3(st_dev, st_ino), never 0.
fn link_group(st: &Stat, kind: FileType) -> Option<u64> {
    if widen(st.st_nlink) <= 1 || kind == FileType::Directory {
        return None;
    }
    let mut h = blake3::Hasher::new();
    h.update(&widen(st.st_dev).to_le_bytes());
    h.update(&widen(st.st_ino).to_le_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    Some(u64::from_le_bytes(first).max(1))
}

/// A `stat` time field (seconds and nanoseconds, typed by architecture).
fn time(secs: impl Into<i64>, nanos: impl TryInto<u32>) -> Time {
    Time {
        secs: secs.into(),
        nanos: nanos
            .try_into()
            .ok()
            .filter(|n| *n < 1_000_000_000)
            .unwrap_or(0),
    }
}

/// An unsigned `stat` field as `u64` (`u32` or `u64` by architecture).
fn widen(v: impl Into<u64>) -> u64 {
    v.into()
}

/// A signed `stat` field (`st_size`, `st_blocks`) as `u64`, negative as 0.
fn nonneg(v: impl TryInto<u64>) -> u64 {
    v.try_into().unwrap_or(0)
}

/// User and group names by id (for a backup) and ids by name (for a
/// restore), each looked up once in the system's databases (NSS).
#[derive(Debug, Default)]
pub(crate) struct OwnerNames {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
    uids: HashMap<Vec<u8>, Option<u32>>,
    gids: HashMap<Vec<u8>, Option<u32>>,
}

impl OwnerNames {
    /// An empty cache.
    pub(crate) fn new() -> OwnerNames {
        OwnerNames::default()
    }

    /// The name of user `uid`, empty when unknown (or over 255 bytes).
    pub(crate) fn user(&mut self, uid: u32) -> Vec<u8> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid));
                storable_name(user.ok().flatten().map(|u| u.name))
            })
            .clone()
    }

    /// The name of group `gid`, empty when unknown (or over 255 bytes).
    pub(crate) fn group(&mut self, gid: u32) -> Vec<u8> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid));
                storable_name(group.ok().flatten().map(|g| g.name))
            })
            .clone()
    }

    /// The id of the user called `name` on this system.
    pub(crate) fn uid(&mut self, name: &[u8]) -> Option<u32> {
        if name.is_empty() {
            return None;
        }
        *self.uids.entry(name.to_vec()).or_insert_with(|| {
            let name = std::str::from_utf8(name).ok()?;
            let user = nix::unistd::User::from_name(name).ok().flatten()?;
            Some(user.uid.as_raw())
        })
    }

    /// The id of the group called `name` on this system.
    pub(crate) fn gid(&mut self, name: &[u8]) -> Option<u32> {
        if name.is_empty() {
            return None;
        }
        *self.gids.entry(name.to_vec()).or_insert_with(|| {
            let name = std::str::from_utf8(name).ok()?;
            let group = nix::unistd::Group::from_name(name).ok().flatten()?;
            Some(group.gid.as_raw())
        })
    }
}

/// A looked-up name as stored: empty when unknown or too long for the format.
fn storable_name(name: Option<String>) -> Vec<u8> {
    name.map(String::into_bytes)
        .filter(|n| n.len() <= 255)
        .unwrap_or_default()
}

/// The extended attributes of an open file or directory, sorted by name.
/// A file system without them has none; values over 64 KiB are skipped
/// with a warning.
pub(crate) fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<Xattr>> {
    read_xattrs_with(
        |buf| rustix::fs::flistxattr(fd, buf),
        |name, buf| rustix::fs::fgetxattr(fd, name, buf),
    )
}

/// The extended attributes of `path` itself (not of what a symlink points
/// at), for kinds that cannot be opened: symlinks, FIFOs, devices. Use
/// [`path_at`] for a name in a directory.
pub(crate) fn read_xattrs_path(path: &Path) -> io::Result<Vec<Xattr>> {
    read_xattrs_with(
        |buf| rustix::fs::llistxattr(path, buf),
        |name, buf| rustix::fs::lgetxattr(path, name, buf),
    )
}

/// A path naming `name` in `dir` without a symlink in `dir`'s place:
/// `/proc/self/fd/<dir>/<name>`. Only `l*` calls keep `name` unfollowed.
pub(crate) fn path_at(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

/// The first size tried for the name list and for each value.
const XATTR_START_LEN: usize = 4096;
/// Linux's `XATTR_LIST_MAX`; a bigger list is a broken file system.
const XATTR_LIST_MAX: usize = 64 << 10;

/// [`read_xattrs`] over a listing and a getting call.
fn read_xattrs_with(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&OsStr, &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<Xattr>> {
    let Some(names) = grow_until_fits(XATTR_LIST_MAX, list)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let value = match grow_until_fits(MAX_XATTR_VALUE_LEN, |buf| {
            get(OsStr::from_bytes(name), buf)
        }) {
            Ok(Some(v)) => v,
            // Removed since the listing, or not readable on this file system.
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(Errno::TOOBIG.raw_os_error()) => {
                tracing::warn!(
                    "extended attribute {:?} is over {MAX_XATTR_VALUE_LEN} bytes; not backed up",
                    String::from_utf8_lossy(name)
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        out.push(Xattr {
            name: name.to_vec(),
            value,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

/// Calls `call` with ever bigger buffers while it says `ERANGE` (the
/// attribute grew since it was measured), up to `max` bytes; beyond,
/// `E2BIG`. `None` when there is nothing: the file system has no extended
/// attributes, or the attribute is gone.
fn grow_until_fits(
    max: usize,
    call: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; XATTR_START_LEN.min(max)];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) if buf.len() < max => {
                let len = (buf.len() * 4).min(max);
                buf.resize(len, 0);
            }
            Err(Errno::RANGE | Errno::TOOBIG) => return Err(Errno::TOOBIG.into()),
            Err(Errno::NOTSUP | Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------
// Apply (restore)
// ---------------------------------------------------------------------------

/// How a restore applies metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ApplyOptions {
    /// Set owners by the stored ids, ignoring the stored names.
    pub numeric_owner: bool,
}

/// What a restore's metadata calls know: the options, whether we run as
/// root, and the names already resolved.
#[derive(Debug)]
pub(crate) struct ApplyContext {
    options: ApplyOptions,
    root: bool,
    euid: u32,
    names: OwnerNames,
}

impl ApplyContext {
    /// A context for this process.
    pub(crate) fn new(options: ApplyOptions) -> ApplyContext {
        let euid = nix::unistd::geteuid();
        ApplyContext {
            options,
            root: euid.is_root(),
            euid: euid.as_raw(),
            names: OwnerNames::new(),
        }
    }

    /// Whether we run as root (and so set any owner, and set-id bits).
    #[cfg(test)]
    pub(crate) fn is_root(&self) -> bool {
        self.root
    }

    /// The ids to give an entry owned by `owner`: by name on this system
    /// unless `numeric_owner`, the stored numbers otherwise or when a name
    /// is empty or unknown here.
    fn resolve(&mut self, owner: &Owner) -> (u32, u32) {
        if self.options.numeric_owner {
            return (owner.uid, owner.gid);
        }
        let uid = self.names.uid(&owner.user).unwrap_or(owner.uid);
        let gid = self.names.gid(&owner.group).unwrap_or(owner.gid);
        (uid, gid)
    }
}

/// What [`apply_metadata`] left undone without failing, for the caller to
/// count and warn about once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ApplyReport {
    /// The owner (or, as non-root, the group) was not permitted.
    pub owner_skipped: bool,
    /// Set-user-id/set-group-id bits left off: not root, or the owner was
    /// not applied.
    pub setid_dropped: bool,
    /// Extended attributes refused: not supported here, not permitted
    /// (`user.*` on a symlink, `trusted.*` as non-root), or no room.
    pub xattrs_skipped: u32,
}

/// Creates the FIFO or device `entry` as `name` in `dir` (mode 0o600 until
/// [`apply_metadata`]). Returns false when a device was skipped: not root,
/// or not permitted to create devices (a container without `CAP_MKNOD`).
pub(crate) fn make_special(dir: BorrowedFd<'_>, name: &OsStr, entry: &DirEntry) -> Result<bool> {
    make_special_as(dir, name, entry, nix::unistd::geteuid().is_root())
}

/// [`make_special`], as root or not.
fn make_special_as(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    entry: &DirEntry,
    root: bool,
) -> Result<bool> {
    check_name(name)?;
    let (kind, rdev) = match entry.node {
        Node::Fifo => (FileType::Fifo, 0),
        Node::CharDevice { rdev } => (FileType::CharacterDevice, rdev),
        Node::BlockDevice { rdev } => (FileType::BlockDevice, rdev),
        _ => {
            return Err(Error::invalid(format!(
                "{}: a {} is not a special file",
                lossy(name),
                entry.node.kind().noun()
            )));
        }
    };
    let device = kind != FileType::Fifo;
    if device && !root {
        return Ok(false);
    }
    match rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), rdev) {
        Ok(()) => Ok(true),
        Err(Errno::PERM) if device => Ok(false),
        Err(e) => Err(Error::io(
            format!("creating {} {}", entry.node.kind().noun(), lossy(name)),
            e.into(),
        )),
    }
}

/// Makes `to_name` in `to_dir` a hard link of `from_name` in `from_dir`
/// (a symlink there is linked itself, never followed).
pub(crate) fn hard_link(
    from_dir: BorrowedFd<'_>,
    from_name: &OsStr,
    to_dir: BorrowedFd<'_>,
    to_name: &OsStr,
) -> Result<()> {
    check_name(from_name)?;
    check_name(to_name)?;
    rustix::fs::linkat(from_dir, from_name, to_dir, to_name, AtFlags::empty()).map_err(|e| {
        Error::io(
            format!("linking {} to {}", lossy(to_name), lossy(from_name)),
            e.into(),
        )
    })
}

/// Gives `name` in `dir` the metadata of `entry`, never following a
/// symlink at `name`. `fd` is the entry opened for reading or writing (a
/// file or directory; not `O_PATH`), used when given; symlinks, FIFOs and
/// devices go by name. Call it after the content is complete, and on a
/// directory after its children (its mode may forbid adding them, and
/// they change its mtime).
///
/// Order matters: extended attributes, owner (`chown` clears set-id bits
/// and file capabilities), mode, then POSIX ACLs and `security.capability`
/// (a `chmod` rewrites the ACL mask), and times last.
pub(crate) fn apply_metadata(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    fd: Option<BorrowedFd<'_>>,
    entry: &DirEntry,
    ctx: &mut ApplyContext,
) -> Result<ApplyReport> {
    check_name(name)?;
    let at = At { dir, name, fd };
    let symlink = entry.node.kind() == Kind::Symlink;
    let mut report = ApplyReport::default();
    let (late, early): (Vec<&Xattr>, Vec<&Xattr>) =
        entry.xattrs.iter().partition(|x| set_after_mode(&x.name));
    set_xattrs(&at, &early, symlink, &mut report)?;
    let owned = set_owner(&at, entry.owner.as_ref(), ctx, &mut report)?;
    if !symlink && let Some(mode) = entry.mode {
        set_mode(&at, mode, owned && ctx.root, &mut report)?;
    }
    set_xattrs(&at, &late, symlink, &mut report)?;
    if let Some(mtime) = entry.mtime {
        set_times(&at, mtime)?;
    }
    Ok(report)
}

/// Where metadata goes: a name in a directory, and maybe its descriptor.
struct At<'a> {
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
    fd: Option<BorrowedFd<'a>>,
}

/// Extended attributes that must be written after `chown` and `chmod`.
fn set_after_mode(name: &[u8]) -> bool {
    matches!(
        name,
        b"system.posix_acl_access" | b"system.posix_acl_default" | b"security.capability"
    )
}

/// Writes `xattrs`, counting those refused in `report`.
fn set_xattrs(
    at: &At<'_>,
    xattrs: &[&Xattr],
    symlink: bool,
    report: &mut ApplyReport,
) -> Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let path = path_at(at.dir, at.name);
    for x in xattrs {
        // Linux allows `user.*` attributes only on files and directories.
        if symlink && x.name.starts_with(b"user.") {
            report.xattrs_skipped += 1;
            continue;
        }
        let name = OsStr::from_bytes(&x.name);
        let flags = XattrFlags::empty();
        let set = match at.fd {
            Some(fd) => rustix::fs::fsetxattr(fd, name, &x.value, flags),
            None => rustix::fs::lsetxattr(&path, name, &x.value, flags),
        };
        match set {
            Ok(()) => {}
            Err(
                Errno::NOTSUP
                | Errno::PERM
                | Errno::ACCESS
                | Errno::NOSPC
                | Errno::TOOBIG
                | Errno::RANGE
                | Errno::INVAL,
            ) => report.xattrs_skipped += 1,
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "setting extended attribute {} of {}",
                        lossy(name),
                        lossy(at.name)
                    ),
                    e.into(),
                ));
            }
        }
    }
    Ok(())
}

/// Sets the owner; returns whether both ids were set. As root, any owner;
/// otherwise only a file that is already ours (the group, if permitted).
fn set_owner(
    at: &At<'_>,
    owner: Option<&Owner>,
    ctx: &mut ApplyContext,
    report: &mut ApplyReport,
) -> Result<bool> {
    let Some(owner) = owner else {
        return Ok(false);
    };
    let (uid, gid) = ctx.resolve(owner);
    // `-1` means "unchanged" to chown.
    let ids = (uid != u32::MAX && gid != u32::MAX).then(|| {
        (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(gid),
        )
    });
    let Some((uid, gid)) = ids else {
        report.owner_skipped = true;
        return Ok(false);
    };
    let (user, group) = if ctx.root {
        (Some(uid), Some(gid))
    } else if uid.as_raw() == ctx.euid {
        (None, Some(gid))
    } else {
        report.owner_skipped = true;
        return Ok(false);
    };
    let set = match at.fd {
        Some(fd) => rustix::fs::fchown(fd, user, group),
        None => rustix::fs::chownat(at.dir, at.name, user, group, AtFlags::SYMLINK_NOFOLLOW),
    };
    match set {
        Ok(()) => Ok(true),
        // EINVAL: an id not mapped in this user namespace.
        Err(Errno::PERM | Errno::INVAL) => {
            report.owner_skipped = true;
            Ok(false)
        }
        Err(e) => Err(Error::io(
            format!("setting the owner of {}", lossy(at.name)),
            e.into(),
        )),
    }
}

/// Sets the permission bits: set-user-id and set-group-id only when
/// `setid` (root, owner applied), sticky always.
fn set_mode(at: &At<'_>, mode: u32, setid: bool, report: &mut ApplyReport) -> Result<()> {
    let mut bits = mode & 0o1777;
    if mode & 0o6000 != 0 {
        if setid {
            bits = mode & 0o7777;
        } else {
            report.setid_dropped = true;
        }
    }
    let mode = Mode::from_raw_mode(bits);
    let set = match at.fd {
        Some(fd) => rustix::fs::fchmod(fd, mode),
        None => chmod_no_follow(at.dir, at.name, mode),
    };
    set.map_err(|e| Error::io(format!("setting the mode of {}", lossy(at.name)), e.into()))
}

/// `chmod` of `name` in `dir` that fails with `ELOOP` on a symlink: Linux
/// has no `fchmodat(AT_SYMLINK_NOFOLLOW)` before 6.6, so like glibc, open
/// an `O_PATH` descriptor without following, check it, and change the
/// inode it holds through `/proc/self/fd`.
fn chmod_no_follow(dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> rustix::io::Result<()> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let handle = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&handle)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(Errno::LOOP);
    }
    let path = format!("/proc/self/fd/{}", handle.as_fd().as_raw_fd());
    rustix::fs::chmodat(rustix::fs::CWD, path.as_str(), mode, AtFlags::empty())
}

/// Sets the modification time (and the access time to the same: it is not
/// stored).
fn set_times(at: &At<'_>, mtime: Time) -> Result<()> {
    let t = Timespec {
        tv_sec: mtime.secs,
        tv_nsec: mtime.nanos.into(),
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    let set = match at.fd {
        Some(fd) => rustix::fs::futimens(fd, &times),
        None => rustix::fs::utimensat(at.dir, at.name, &times, AtFlags::SYMLINK_NOFOLLOW),
    };
    set.map_err(|e| Error::io(format!("setting the times of {}", lossy(at.name)), e.into()))
}

/// Refuses a name that is not one path component.
fn check_name(name: &OsStr) -> Result<()> {
    crate::format::dir::check_name(name.as_bytes()).map_err(Error::invalid)
}

/// A name for messages.
fn lossy(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// Sparse files
// ---------------------------------------------------------------------------

/// The shortest run of zeros [`SparseWriter`] leaves as a hole.
pub(crate) const HOLE_MIN: usize = 4096;

/// Writes a new, empty file from its start, leaving each write of at
/// least [`HOLE_MIN`] zero bytes as a hole (a seek) when enabled.
/// [`SparseWriter::finish`] then sets the length, so a trailing hole counts.
#[derive(Debug)]
pub(crate) struct SparseWriter {
    file: File,
    sparse: bool,
    /// Zeros skipped since the last write, not yet seeked over.
    pending: u64,
}

impl SparseWriter {
    /// A writer to `file`; with `sparse` false it writes every byte.
    pub(crate) fn new(file: File, sparse: bool) -> SparseWriter {
        SparseWriter {
            file,
            sparse,
            pending: 0,
        }
    }

    /// Extends the file over a trailing hole and gives it back.
    pub(crate) fn finish(mut self) -> io::Result<File> {
        if self.pending > 0 {
            let end = self.file.stream_position()? + self.pending;
            self.file.set_len(end)?;
            self.file.seek(SeekFrom::Start(end))?;
        }
        Ok(self.file)
    }

    /// Moves over the zeros skipped so far.
    fn seek_pending(&mut self) -> io::Result<()> {
        if self.pending > 0 {
            let by = i64::try_from(self.pending)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "hole too long"))?;
            self.file.seek(SeekFrom::Current(by))?;
            self.pending = 0;
        }
        Ok(())
    }
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.sparse && buf.len() >= HOLE_MIN && all_zero(buf) {
            self.pending += buf.len() as u64;
            return Ok(buf.len());
        }
        self.seek_pending()?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Whether every byte is zero (in blocks the compiler vectorises).
fn all_zero(buf: &[u8]) -> bool {
    buf.chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, b| acc | b) == 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! These run as root (the test suite does) and really set owners and
    //! create devices. The ACLs are written as `system.posix_acl_*`
    //! attribute bytes (Linux's `posix_acl_xattr` format), so `setfacl` is
    //! not needed.
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt;

    const SECS: i64 = 1_600_000_000;
    const NANOS: u32 = 123_456_789;

    fn assert_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests set owners and create devices: run them as root"
        );
    }

    fn open_dir(path: &Path) -> OwnedFd {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::empty()).unwrap()
    }

    fn os(name: &str) -> &OsStr {
        OsStr::new(name)
    }

    /// `posix_acl_xattr` bytes: version 2, then (tag, perm, id) entries.
    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }
    const NONE: u32 = u32::MAX;
    const USER_OBJ: u16 = 1;
    const USER: u16 = 2;
    const GROUP_OBJ: u16 = 4;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
    }

    fn set_mtime(path: &Path, secs: i64, nanos: u32) {
        let t = Timespec {
            tv_sec: secs,
            tv_nsec: nanos.into(),
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn own(path: &Path, uid: u32, gid: u32, mode: Option<u32>) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
        if let Some(mode) = mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    /// Every kind, with owners, modes, nanosecond times, xattrs and ACLs.
    fn make_source(src: &Path) {
        let p = |n: &str| src.join(n);
        // A file owned by 999:999, 0o640, a user xattr and an access ACL.
        std::fs::write(p("owned"), b"hello").unwrap();
        set_xattr(&p("owned"), "user.comment", b"kept");
        let access = acl(&[
            (USER_OBJ, 6, NONE),
            (USER, 6, 1000),
            (GROUP_OBJ, 4, NONE),
            (MASK, 4, NONE),
            (OTHER, 0, NONE),
        ]);
        set_xattr(&p("owned"), "system.posix_acl_access", &access);
        own(&p("owned"), 999, 999, Some(0o640));
        set_mtime(&p("owned"), SECS, NANOS);
        // Set-group-id (set after the chown, which clears it).
        std::fs::write(p("setgid"), b"#!/bin/sh\n").unwrap();
        own(&p("setgid"), 0, 999, Some(0o2755));
        set_mtime(&p("setgid"), SECS + 1, 1);
        // Two hard links of one file.
        std::fs::write(p("link1"), b"shared").unwrap();
        std::fs::hard_link(p("link1"), p("link2")).unwrap();
        own(&p("link1"), 999, 0, Some(0o604));
        set_mtime(&p("link1"), SECS + 2, 2);
        // 64 MiB with 1 MiB of data in the middle.
        let mut f = File::create(p("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i % 251 + 1).to_le_bytes()[0])
            .collect();
        f.write_all(&data).unwrap();
        drop(f);
        set_mtime(&p("sparse"), SECS + 3, 3);
        // A directory with a default ACL.
        std::fs::create_dir(p("dir")).unwrap();
        set_xattr(&p("dir"), "user.d", b"dir attr");
        let default = acl(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 5, NONE), (OTHER, 0, NONE)]);
        set_xattr(&p("dir"), "system.posix_acl_default", &default);
        own(&p("dir"), 999, 0, Some(0o1750));
        set_mtime(&p("dir"), SECS + 4, 4);
        // A symlink, owned and timed itself.
        std::os::unix::fs::symlink("owned", p("symlink")).unwrap();
        own(&p("symlink"), 999, 999, None);
        set_mtime(&p("symlink"), SECS + 5, 5);
        // A FIFO and /dev/null's twin.
        let fifo = FileType::Fifo;
        rustix::fs::mknodat(rustix::fs::CWD, p("fifo"), fifo, Mode::empty(), 0).unwrap();
        own(&p("fifo"), 999, 999, Some(0o620));
        set_mtime(&p("fifo"), SECS + 6, 6);
        let dev = rustix::fs::makedev(1, 3);
        let chr = FileType::CharacterDevice;
        rustix::fs::mknodat(rustix::fs::CWD, p("null"), chr, Mode::empty(), dev).unwrap();
        own(&p("null"), 0, 0, Some(0o666));
        set_mtime(&p("null"), SECS + 7, 7);
    }

    /// An entry as a backup sees it (with symlink target and xattrs).
    fn capture(dir: BorrowedFd<'_>, name: &str, names: &mut OwnerNames) -> DirEntry {
        let st = stat_at(dir, os(name)).unwrap();
        let mut e = entry_from_stat(name.into(), &st, names).unwrap();
        e.xattrs = match &mut e.node {
            Node::File { .. } | Node::Dir { .. } => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).unwrap();
                read_xattrs(fd.as_fd()).unwrap()
            }
            Node::Symlink { target } => {
                *target = read_link_at(dir, os(name)).unwrap();
                read_xattrs_path(&path_at(dir, os(name))).unwrap()
            }
            _ => read_xattrs_path(&path_at(dir, os(name))).unwrap(),
        };
        e
    }

    fn capture_all(dir: &Path) -> BTreeMap<String, DirEntry> {
        let fd = open_dir(dir);
        let mut names = OwnerNames::new();
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            out.insert(name.clone(), capture(fd.as_fd(), &name, &mut names));
        }
        out
    }

    /// Copies the content as a restore does: 16 KiB writes, holes kept.
    fn copy_content(from: &Path, to: File, sparse: bool) -> File {
        let mut from = File::open(from).unwrap();
        let mut w = SparseWriter::new(to, sparse);
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = from.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).unwrap();
        }
        w.finish().unwrap()
    }

    /// Recreates `entries` (from `src`) in `dst`, returning the reports.
    fn restore(
        src: &Path,
        dst: &Path,
        entries: &BTreeMap<String, DirEntry>,
    ) -> Vec<(String, ApplyReport)> {
        let dir = open_dir(dst);
        let dir = dir.as_fd();
        let mut ctx = ApplyContext::new(ApplyOptions::default());
        assert!(ctx.is_root());
        let mut groups: HashMap<u64, String> = HashMap::new();
        let mut reports = Vec::new();
        for (name, e) in entries {
            let name_os = os(name);
            let report = match &e.node {
                Node::File { .. } => {
                    if let Some(first) = e.link_group.and_then(|g| groups.get(&g)) {
                        hard_link(dir, os(first), dir, name_os).unwrap();
                        continue;
                    }
                    if let Some(g) = e.link_group {
                        groups.insert(g, name.clone());
                    }
                    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
                    let fd = rustix::fs::openat(dir, name_os, flags, Mode::from_raw_mode(0o600));
                    let file = copy_content(&src.join(name), File::from(fd.unwrap()), e.sparse);
                    apply_metadata(dir, name_os, Some(file.as_fd()), e, &mut ctx).unwrap()
                }
                Node::Dir { .. } => {
                    rustix::fs::mkdirat(dir, name_os, Mode::from_raw_mode(0o700)).unwrap();
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
                    let fd = rustix::fs::openat(dir, name_os, flags, Mode::empty()).unwrap();
                    apply_metadata(dir, name_os, Some(fd.as_fd()), e, &mut ctx).unwrap()
                }
                Node::Symlink { target } => {
                    rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name_os).unwrap();
                    apply_metadata(dir, name_os, None, e, &mut ctx).unwrap()
                }
                _ => {
                    assert!(make_special(dir, name_os, e).unwrap(), "{name} skipped");
                    apply_metadata(dir, name_os, None, e, &mut ctx).unwrap()
                }
            };
            reports.push((name.clone(), report));
        }
        reports
    }

    /// What must survive a restore: all but ctime and inode, and the link
    /// group only as "has one" (it is derived from the inode).
    fn comparable(e: &DirEntry) -> DirEntry {
        let mut e = e.clone();
        e.change = None;
        e.link_group = e.link_group.map(|_| 1);
        e
    }

    #[test]
    fn every_kind_round_trips_through_capture_and_apply() {
        assert_root();
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        make_source(&src);
        let before = capture_all(&src);

        // What the capture saw.
        let owned = &before["owned"];
        assert_eq!(owned.mode, Some(0o640));
        let o = owned.owner.as_ref().unwrap();
        assert_eq!((o.uid, o.gid), (999, 999));
        assert_eq!(
            owned.mtime,
            Some(Time {
                secs: SECS,
                nanos: NANOS
            })
        );
        assert_eq!(owned.size, 5);
        let names: Vec<_> = owned.xattrs.iter().map(|x| x.name.as_slice()).collect();
        assert_eq!(names, [&b"system.posix_acl_access"[..], b"user.comment"]);
        assert_eq!(before["setgid"].mode, Some(0o2755));
        let root = before["null"].owner.as_ref().unwrap();
        assert_eq!(
            (root.user.as_slice(), root.group.as_slice()),
            (&b"root"[..], &b"root"[..])
        );
        assert!(before["link1"].link_group.is_some());
        assert_eq!(before["link1"].link_group, before["link2"].link_group);
        assert_eq!(before["owned"].link_group, None);
        assert!(before["sparse"].sparse && !before["owned"].sparse);
        assert_eq!(before["sparse"].size, 64 << 20);
        assert_eq!(before["dir"].mode, Some(0o1750));
        let acl_default = &before["dir"].xattrs[0];
        assert_eq!(acl_default.name, b"system.posix_acl_default");
        assert_eq!(before["dir"].link_group, None);
        assert_eq!(before["dir"].size, 0);
        let target = Node::Symlink {
            target: b"owned".to_vec(),
        };
        assert_eq!(before["symlink"].node, target);
        assert_eq!(before["fifo"].node, Node::Fifo);
        let rdev = rustix::fs::makedev(1, 3);
        assert_eq!(before["null"].node, Node::CharDevice { rdev });
        for e in before.values() {
            e.check().unwrap();
        }

        // Restore, then capture again: every field survives.
        let reports = restore(&src, &dst, &before);
        for (name, report) in &reports {
            assert_eq!(*report, ApplyReport::default(), "{name}");
        }
        let after = capture_all(&dst);
        assert_eq!(before.len(), after.len());
        for (name, e) in &before {
            assert_eq!(comparable(&after[name]), comparable(e), "{name}");
        }
        assert_eq!(after["link1"].link_group, after["link2"].link_group);
        for name in ["owned", "setgid", "link1", "sparse"] {
            let (a, b) = (src.join(name), dst.join(name));
            assert!(
                std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
                "{name}"
            );
        }

        // Holes stay holes; links stay one inode.
        let d = open_dir(&dst);
        let st = stat_at(d.as_fd(), os("sparse")).unwrap();
        assert_eq!(st.st_size, 64 << 20);
        let allocated = nonneg(st.st_blocks) * 512;
        assert!(allocated < 4 << 20, "{allocated} bytes allocated");
        let l1 = stat_at(d.as_fd(), os("link1")).unwrap();
        let l2 = stat_at(d.as_fd(), os("link2")).unwrap();
        assert_eq!(l1.st_ino, l2.st_ino);
        assert_eq!(widen(l1.st_nlink), 2);
    }

    /// A directory with `victim` outside the target and a link to it inside.
    fn symlink_scene() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let victim = tmp.path().join("outside/victim");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(victim.parent().unwrap()).unwrap();
        std::fs::write(&victim, b"mine").unwrap();
        set_xattr(&victim, "user.v", b"orig");
        own(&victim, 0, 0, Some(0o600));
        set_mtime(&victim, 1_000_000_000, 5);
        std::os::unix::fs::symlink(&victim, target.join("f")).unwrap();
        (tmp, target, victim)
    }

    #[test]
    fn apply_metadata_never_changes_what_a_symlink_points_at() {
        assert_root();
        let (_tmp, target, victim) = symlink_scene();
        let mut names = OwnerNames::new();
        let outside = open_dir(victim.parent().unwrap());
        let untouched = capture(outside.as_fd(), "victim", &mut names);
        let dir = open_dir(&target);
        let mut ctx = ApplyContext::new(ApplyOptions::default());
        let access = acl(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 7, NONE), (OTHER, 7, NONE)]);
        let meta = |node: Node| DirEntry {
            mode: Some(0o4777),
            owner: Some(Owner {
                uid: 999,
                gid: 999,
                ..Owner::default()
            }),
            mtime: Some(Time {
                secs: 2_000_000_000,
                nanos: 0,
            }),
            xattrs: vec![
                Xattr {
                    name: b"system.posix_acl_access".to_vec(),
                    value: access.clone(),
                },
                Xattr {
                    name: b"user.v".to_vec(),
                    value: b"changed".to_vec(),
                },
            ],
            ..DirEntry::bare("f", node)
        };
        // An entry saying "file" where a symlink now is: refused at the mode.
        let file = meta(Node::File {
            root: BlobId([0; 32]),
            chunks: 0,
            chunker: ChunkerParams::DEFAULT,
        });
        let e = apply_metadata(dir.as_fd(), os("f"), None, &file, &mut ctx).unwrap_err();
        assert!(e.to_string().contains("mode"), "{e}");
        // A symlink entry: the link itself gets owner and times.
        let link = meta(Node::Symlink {
            target: b"x".to_vec(),
        });
        let report = apply_metadata(dir.as_fd(), os("f"), None, &link, &mut ctx).unwrap();
        assert!(report.xattrs_skipped >= 1, "{report:?}");
        let st = stat_at(dir.as_fd(), os("f")).unwrap();
        assert_eq!((st.st_uid, st.st_gid), (999, 999));
        assert_eq!(st.st_mtime, 2_000_000_000);

        assert_eq!(capture(outside.as_fd(), "victim", &mut names), untouched);
        assert_eq!(std::fs::read(&victim).unwrap(), b"mine");
        assert_eq!(std::fs::read_link(target.join("f")).unwrap(), victim);
    }

    #[test]
    fn owners_resolve_by_name_unless_numeric() {
        assert_root();
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path());
        let entry = DirEntry {
            owner: Some(Owner {
                uid: 12345,
                gid: 12346,
                user: b"root".to_vec(),
                group: b"root".to_vec(),
            }),
            ..DirEntry::bare("x", Node::Fifo)
        };
        for (numeric, ids) in [(false, (0, 0)), (true, (12345, 12346))] {
            let name = if numeric { "numeric" } else { "named" };
            assert!(make_special(dir.as_fd(), os(name), &entry).unwrap());
            let mut ctx = ApplyContext::new(ApplyOptions {
                numeric_owner: numeric,
            });
            apply_metadata(dir.as_fd(), os(name), None, &entry, &mut ctx).unwrap();
            let st = stat_at(dir.as_fd(), os(name)).unwrap();
            assert_eq!((st.st_uid, st.st_gid), ids, "{name}");
        }
        // An unknown name falls back to the number.
        let mut names = OwnerNames::new();
        assert_eq!(names.uid(b"no-such-user-cairn"), None);
        assert_eq!(names.uid(b""), None);
        assert_eq!(names.user(0), b"root");
    }

    #[test]
    fn without_root_other_owners_and_setid_bits_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path());
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let mut ctx = ApplyContext::new(ApplyOptions::default());
        ctx.root = false; // as a user would run it
        let entry = DirEntry {
            mode: Some(0o4755),
            owner: Some(Owner {
                uid: me.wrapping_add(1),
                gid: 999,
                ..Owner::default()
            }),
            ..DirEntry::bare("f", Node::Fifo)
        };
        let file = File::options()
            .write(true)
            .open(tmp.path().join("f"))
            .unwrap();
        let fd = Some(file.as_fd());
        let report = apply_metadata(dir.as_fd(), os("f"), fd, &entry, &mut ctx).unwrap();
        assert!(report.owner_skipped && report.setid_dropped, "{report:?}");
        let st = stat_at(dir.as_fd(), os("f")).unwrap();
        assert_eq!((st.st_uid, st.st_mode & 0o7777), (me, 0o755));
        // Devices are skipped, FIFOs made.
        let rdev = rustix::fs::makedev(1, 3);
        let dev = DirEntry::bare("d", Node::CharDevice { rdev });
        assert!(!make_special_as(dir.as_fd(), os("d"), &dev, false).unwrap());
        assert!(stat_at(dir.as_fd(), os("d")).is_err());
        let fifo = DirEntry::bare("p", Node::Fifo);
        assert!(make_special_as(dir.as_fd(), os("p"), &fifo, false).unwrap());
    }

    #[test]
    fn make_special_refuses_other_kinds_and_bad_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path());
        let file = DirEntry::bare(
            "f",
            Node::Dir {
                tree: BlobId([0; 32]),
            },
        );
        assert!(make_special(dir.as_fd(), os("f"), &file).is_err());
        let fifo = DirEntry::bare("f", Node::Fifo);
        assert!(make_special(dir.as_fd(), os("a/b"), &fifo).is_err());
        assert!(make_special(dir.as_fd(), os(".."), &fifo).is_err());
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }

    #[test]
    fn xattrs_are_read_sorted_and_none_on_a_plain_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(read_xattrs(f.as_fd()).unwrap(), []);
        for name in ["user.c", "user.a", "user.b"] {
            set_xattr(&p, name, name.as_bytes());
        }
        set_xattr(&p, "user.big", &[7u8; 3000]);
        let got = read_xattrs(f.as_fd()).unwrap();
        let names: Vec<_> = got.iter().map(|x| x.name.clone()).collect();
        assert_eq!(names, [&b"user.a"[..], b"user.b", b"user.big", b"user.c"]);
        assert_eq!(got[2].value, [7u8; 3000]);
        assert_eq!(read_xattrs_path(&p).unwrap(), got);
    }

    #[test]
    fn a_growing_attribute_is_read_with_a_bigger_buffer() {
        // The value is 10000 bytes: 4096 and 8192 are too small (ERANGE).
        let calls = std::cell::Cell::new(0);
        let got = grow_until_fits(MAX_XATTR_VALUE_LEN, |buf| {
            calls.set(calls.get() + 1);
            if buf.len() < 10_000 {
                return Err(Errno::RANGE);
            }
            buf[..10_000].fill(9);
            Ok(10_000)
        });
        assert_eq!(got.unwrap().unwrap(), vec![9u8; 10_000]);
        assert_eq!(calls.get(), 2);
        // Never fits: too big. No support, or gone: nothing.
        let e = grow_until_fits(MAX_XATTR_VALUE_LEN, |_| Err(Errno::RANGE)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::TOOBIG.raw_os_error()));
        for errno in [Errno::NOTSUP, Errno::NODATA] {
            assert_eq!(grow_until_fits(100, |_| Err(errno)).unwrap(), None);
        }
    }

    #[test]
    fn sparse_writer_leaves_zero_runs_as_holes_and_keeps_the_length() {
        let tmp = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 16 << 10];
        for sparse in [false, true] {
            let p = tmp.path().join(format!("f{sparse}"));
            let mut w = SparseWriter::new(File::create(&p).unwrap(), sparse);
            w.write_all(b"head").unwrap();
            w.write_all(&[0u8; 100]).unwrap(); // too short to be a hole
            for _ in 0..64 {
                w.write_all(&zeros).unwrap();
            }
            w.write_all(b"middle").unwrap();
            for _ in 0..64 {
                w.write_all(&zeros).unwrap();
            }
            let file = w.finish().unwrap();
            let len = 4 + 100 + 2 * (1 << 20) + 6;
            assert_eq!(file.metadata().unwrap().len(), len);
            let mut expected = b"head".to_vec();
            expected.resize(104 + (1 << 20), 0);
            expected.extend_from_slice(b"middle");
            expected.resize(usize::try_from(len).unwrap(), 0);
            assert!(std::fs::read(&p).unwrap() == expected);
            let blocks = std::os::unix::fs::MetadataExt::blocks(&file.metadata().unwrap());
            if sparse {
                assert!(blocks * 512 <= 64 << 10, "{blocks} blocks");
            } else {
                assert!(blocks * 512 >= 2 << 20, "{blocks} blocks");
            }
        }
    }
}
