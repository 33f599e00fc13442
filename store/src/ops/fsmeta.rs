//! STUB (replaced by the fsmeta branch): file-system metadata, both directions.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Stat};

use crate::chunker::ChunkerParams;
use crate::dir::{Change, DirEntry, Node, Owner, Time, Xattr};
use crate::id::BlobId;

/// Owner name cache.
#[derive(Debug, Default)]
pub(crate) struct OwnerNames;

pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

pub(crate) fn entry_from_stat(name: Vec<u8>, st: &Stat, _names: &mut OwnerNames) -> Option<DirEntry> {
    let ft = FileType::from_raw_mode(st.st_mode);
    let node = match ft {
        FileType::RegularFile => Node::File { root: BlobId([0; 32]), chunks: 0, chunker: ChunkerParams::DEFAULT },
        FileType::Directory => Node::Dir { tree: BlobId([0; 32]) },
        FileType::Symlink => Node::Symlink { target: Vec::new() },
        FileType::Fifo => Node::Fifo,
        FileType::CharacterDevice => Node::CharDevice { rdev: st.st_rdev },
        FileType::BlockDevice => Node::BlockDevice { rdev: st.st_rdev },
        _ => return None,
    };
    let file = ft == FileType::RegularFile;
    Some(DirEntry {
        mode: Some(st.st_mode & 0o7777),
        owner: Some(Owner { uid: st.st_uid, gid: st.st_gid, user: vec![], group: vec![] }),
        mtime: Some(Time { secs: st.st_mtime, nanos: st.st_mtime_nsec as u32 }),
        change: Some(Change { ctime: Time { secs: st.st_ctime, nanos: st.st_ctime_nsec as u32 }, inode: st.st_ino }),
        size: if file { st.st_size as u64 } else { 0 },
        link_group: (st.st_nlink > 1 && ft != FileType::Directory).then_some(st.st_ino | 1),
        sparse: file && (st.st_blocks as u64) * 512 < st.st_size as u64,
        ..DirEntry::bare(name, node)
    })
}

pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

pub(crate) fn read_xattrs(_fd: BorrowedFd<'_>) -> io::Result<Vec<Xattr>> {
    Ok(Vec::new())
}

pub(crate) fn read_xattrs_path(_path: &Path) -> io::Result<Vec<Xattr>> {
    Ok(Vec::new())
}

/// How metadata is applied.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApplyOptions {
    pub numeric_owner: bool,
}

/// State kept while applying metadata.
#[derive(Debug, Default)]
pub(crate) struct ApplyContext {
    pub options: ApplyOptions,
}

impl ApplyContext {
    pub fn new(options: ApplyOptions) -> ApplyContext {
        ApplyContext { options }
    }
}

/// What was not applied.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ApplyReport {
    pub owner_skipped: bool,
    pub xattrs_skipped: bool,
}

pub(crate) fn make_special(_dir: BorrowedFd<'_>, _name: &OsStr, _entry: &DirEntry) -> crate::error::Result<bool> {
    Ok(false)
}

pub(crate) fn hard_link(from_dir: BorrowedFd<'_>, from: &OsStr, to_dir: BorrowedFd<'_>, to: &OsStr) -> crate::error::Result<()> {
    rustix::fs::linkat(from_dir, from, to_dir, to, AtFlags::empty())
        .map_err(|e| crate::error::Error::io(format!("linking {}", to.to_string_lossy()), e.into()))
}

pub(crate) fn apply_metadata(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    _fd: Option<BorrowedFd<'_>>,
    entry: &DirEntry,
    _ctx: &mut ApplyContext,
) -> crate::error::Result<ApplyReport> {
    let fail = |e: rustix::io::Errno| crate::error::Error::io(format!("setting metadata of {}", name.to_string_lossy()), e.into());
    if let Some(mode) = entry.mode
        && !matches!(entry.node, Node::Symlink { .. })
    {
        rustix::fs::chmodat(dir, name, rustix::fs::Mode::from_raw_mode(mode & 0o1777), AtFlags::empty()).map_err(fail)?;
    }
    if let Some(t) = entry.mtime {
        let ts = rustix::fs::Timespec { tv_sec: t.secs, tv_nsec: t.nanos as _ };
        let times = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
        rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
    }
    Ok(ApplyReport::default())
}

/// Writes, turning all-zero writes into holes when enabled.
#[derive(Debug)]
pub(crate) struct SparseWriter {
    file: std::fs::File,
}

impl SparseWriter {
    pub fn new(file: std::fs::File, _enabled: bool) -> SparseWriter {
        SparseWriter { file }
    }
    pub fn finish(self) -> io::Result<std::fs::File> {
        Ok(self.file)
    }
}

impl io::Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
