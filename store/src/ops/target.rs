//! A restore target: directories opened by descriptor, and every name
//! inside them resolved one component at a time, relative to its parent's
//! descriptor, never following a symlink.
//!
//! What this promises: whatever is in the target when the restore starts
//! or appears in it while the restore runs (a directory replaced by a
//! symlink, a symlink the snapshot itself created), nothing is created,
//! written, renamed or changed outside the target directory. A symlink or
//! file where a directory is needed is an error naming the path.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// One directory of a restore target, opened without following links.
#[derive(Debug)]
pub(crate) struct TargetDir {
    fd: OwnedFd,
    /// How it was reached, for messages.
    path: PathBuf,
}

/// Open a directory: read-only (for listing and `fchmod`), never a link.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl TargetDir {
    /// Opens `path` as the root of a restore, creating it when missing; it
    /// must be empty. `path` itself is the caller's and may be reached
    /// through links; nothing below it is.
    pub fn create_empty(path: &Path) -> Result<TargetDir> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let root = TargetDir::open(path)?;
        let entries = rustix::fs::Dir::read_from(&root.fd)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e.into()))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("reading {}", path.display()), e.into()))?;
            if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
                return Err(Error::AlreadyExists {
                    what: format!("{} is not empty", path.display()),
                    hint: "restore into a new or empty directory".into(),
                });
            }
        }
        Ok(root)
    }

    /// Opens `path` as the root of a restore into an existing directory
    /// (`--overwrite`), creating it when missing.
    pub fn create_or_open(path: &Path) -> Result<TargetDir> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        TargetDir::open(path)
    }

    /// Its descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory `rel` (`/`-separated bytes) is in, created when
    /// missing, and its last component.
    pub fn parent_of_bytes<'n>(&self, rel: &'n [u8]) -> Result<(TargetDir, &'n OsStr)> {
        let at = rel.iter().rposition(|&b| b == b'/');
        let (parent, leaf) = match at {
            Some(at) => (&rel[..at], &rel[at + 1..]),
            None => (&rel[..0], rel),
        };
        let mut dir = self.subdir("", false)?;
        for name in parent.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            dir = dir.child(OsStr::from_bytes(name), true)?;
        }
        Ok((dir, OsStr::from_bytes(leaf)))
    }

    /// Opens an existing directory `path` (following links in `path`).
    fn open(path: &Path) -> Result<TargetDir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::empty())
            .map_err(|e| Error::io(format!("opening {}", path.display()), e.into()))?;
        Ok(TargetDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path of `name` below this directory, for messages.
    pub fn path_of(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// The directory `rel` (components joined by `/`; empty for this one)
    /// below this one, each missing component created when `create`.
    pub fn subdir(&self, rel: &str, create: bool) -> Result<TargetDir> {
        let mut dir = TargetDir {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?,
            path: self.path.clone(),
        };
        for name in rel.split('/').filter(|c| !c.is_empty()) {
            dir = dir.child(name, create)?;
        }
        Ok(dir)
    }

    /// The directory `rel` is in, created when missing, and its last component.
    #[cfg(test)]
    pub fn parent_of<'n>(&self, rel: &'n str) -> Result<(TargetDir, &'n str)> {
        let (parent, leaf) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok((self.subdir(parent, true)?, leaf))
    }

    /// The directory `name` here, created when missing and `create`.
    pub fn child(&self, name: impl AsRef<OsStr>, create: bool) -> Result<TargetDir> {
        let name = name.as_ref();
        let path = self.path.join(name);
        if create {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::io(format!("creating {}", path.display()), e.into())),
            }
        }
        match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(TargetDir { fd, path }),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => Err(Error::io(
                format!(
                    "opening {}: a symlink or file is where a directory belongs; \
                     restore never follows links inside its target",
                    path.display()
                ),
                e.into(),
            )),
            Err(e) => Err(Error::io(format!("opening {}", path.display()), e.into())),
        }
    }

    /// Creates the new file `name` here, writable; never through a link.
    pub fn create_file(&self, name: impl AsRef<OsStr>) -> Result<File> {
        let name = name.as_ref();
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600))
            .map(File::from)
            .map_err(|e| {
                Error::io(
                    format!("creating {}", self.path_of(name).display()),
                    e.into(),
                )
            })
    }

    /// Renames `from` to `to`, both here.
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|e| {
            Error::io(
                format!("renaming {}", self.path_of(from).display()),
                e.into(),
            )
        })
    }

    /// Removes the file `name` here (not following it if it is a link).
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty()).map_err(|e| {
            Error::io(
                format!("removing {}", self.path_of(name).display()),
                e.into(),
            )
        })
    }

    /// Creates the symlink `name` here pointing at `target`.
    pub fn symlink(&self, target: impl AsRef<OsStr>, name: impl AsRef<OsStr>) -> Result<()> {
        let (target, name) = (target.as_ref(), name.as_ref());
        rustix::fs::symlinkat(target, &self.fd, name).map_err(|e| {
            Error::io(
                format!("creating symlink {}", self.path_of(name).display()),
                e.into(),
            )
        })
    }

    /// Removes whatever `name` is here (a directory with everything in
    /// it), never following a link.
    pub fn remove_any(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        let fail = |e: Errno| {
            Error::io(
                format!("removing {}", self.path_of(name).display()),
                e.into(),
            )
        };
        match rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR | Errno::PERM) => {}
            Err(e) => return Err(fail(e)),
        }
        let dir = self.child(name, false)?;
        let (here, there) = (
            rustix::fs::fstat(&self.fd).map_err(fail)?,
            rustix::fs::fstat(&dir.fd).map_err(fail)?,
        );
        if here.st_dev != there.st_dev {
            return Err(Error::io(
                format!("removing {}", self.path_of(name).display()),
                std::io::Error::other(
                    "it is a mount point: restore removes nothing on another file system; unmount it first",
                ),
            ));
        }
        for child in dir.names()? {
            dir.remove_any(&child)?;
        }
        rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::REMOVEDIR).map_err(fail)
    }

    /// The names here, without `.` and `..`.
    pub fn names(&self) -> Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStringExt;
        let fail = |e: Errno| Error::io(format!("reading {}", self.path.display()), e.into());
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(std::ffi::OsString::from_vec(name.to_vec()));
            }
        }
        Ok(out)
    }

    /// Opens the existing regular file `name` here for its metadata, never
    /// through a link, checking it is still the file `expected` describes.
    pub fn open_existing(
        &self,
        name: impl AsRef<OsStr>,
        expected: Option<&rustix::fs::Stat>,
    ) -> Result<File> {
        let name = name.as_ref();
        let fail =
            |e: std::io::Error| Error::io(format!("opening {}", self.path_of(name).display()), e);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = rustix::fs::openat(&self.fd, name, flags, Mode::empty())
            .map(File::from)
            .map_err(|e| fail(e.into()))?;
        let st = rustix::fs::fstat(&file).map_err(|e| fail(e.into()))?;
        if expected.is_some_and(|e| (e.st_dev, e.st_ino) != (st.st_dev, st.st_ino)) {
            return Err(fail(std::io::Error::other(
                "it was replaced while the restore ran; run the restore again",
            )));
        }
        Ok(file)
    }

    /// What `name` here is, without following it; `None` when absent.
    pub fn stat(&self, name: impl AsRef<OsStr>) -> Result<Option<rustix::fs::Stat>> {
        let name = name.as_ref();
        match rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io(
                format!("reading {}", self.path_of(name).display()),
                e.into(),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::io::Write;

    /// A target and, beside it, an "outside" directory with one file.
    fn scene() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"mine").unwrap();
        (tmp, target, outside)
    }

    fn outside_is_untouched(outside: &Path) {
        let names: Vec<_> = std::fs::read_dir(outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keep"]);
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"mine");
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_is_refused() {
        let (_tmp, target, outside) = scene();
        let root = TargetDir::open(&target).unwrap();
        root.subdir("a/b", true).unwrap();
        // Between two steps of a restore, `a` becomes a link to outside.
        std::fs::remove_dir(target.join("a/b")).unwrap();
        std::fs::remove_dir(target.join("a")).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("a")).unwrap();

        for create in [true, false] {
            let e = root.subdir("a/b", create).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Io, "{e}");
            assert!(e.to_string().contains("target/a"), "{e}");
        }
        let e = root.parent_of("a/file").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        let e = root.parent_of("a/keep").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        outside_is_untouched(&outside);
    }

    #[test]
    fn the_last_component_is_never_followed() {
        let (_tmp, target, outside) = scene();
        let root = TargetDir::open(&target).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), target.join("f")).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("d")).unwrap();
        // Creating a file where a link is fails; it never writes through.
        let e = root.create_file("f").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        // A link where a directory's metadata goes is refused.
        let e = root.subdir("d", false).unwrap_err();
        assert!(e.to_string().contains("never follows links"), "{e}");
        // A file where a directory belongs is refused too.
        std::fs::write(target.join("plain"), b"x").unwrap();
        let e = root.subdir("plain/x", true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        // Renaming over a link replaces the link, not what it points at.
        let mut partial = root.create_file("f.cairn-partial").unwrap();
        partial.write_all(b"restored").unwrap();
        root.rename("f.cairn-partial", "f").unwrap();
        assert_eq!(std::fs::read(target.join("f")).unwrap(), b"restored");
        root.symlink("../outside", "link").unwrap();
        assert!(root.subdir("link", true).is_err());
        outside_is_untouched(&outside);
    }

    #[test]
    fn the_target_must_be_empty_and_is_created_when_missing() {
        let (_tmp, target, _) = scene();
        std::fs::write(target.join("x"), b"").unwrap();
        let e = TargetDir::create_empty(&target).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let fresh = target.join("new/deeper");
        TargetDir::create_empty(&fresh).unwrap();
        assert!(fresh.is_dir());
    }
}
