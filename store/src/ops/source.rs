//! What a backup reads: files and directories, standard input, or a command's output.
//!
//! A source becomes a sorted list of entries; file entries are opened one at
//! a time as the backup reaches them. A command's failure surfaces as a read
//! error at the end of its output, so it is handled like any broken stream.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};
use crate::manifest::{ItemKind, SourceInfo, SourceKind, validate_item_name};
use crate::redact::redacted;

/// Keep this much of a command's stderr for the error message.
const STDERR_TAIL_LEN: usize = 4096;

/// What to back up.
pub enum Source {
    /// Files and directories; each file is an item named by its path below
    /// the argument's parent (`/srv/volumes` gives `volumes/...`).
    Paths(Vec<PathBuf>),
    /// Standard input as one item.
    Stdin {
        /// The item's name.
        name: String,
    },
    /// A shell command's standard output as one item (`sh -c COMMAND`).
    Command {
        /// The command line.
        command: String,
        /// The item's name.
        name: String,
    },
    /// Any reader as one item (for library users and tests).
    Reader {
        /// The item's name.
        name: String,
        /// The content.
        reader: Box<dyn Read + Send>,
    },
    /// Entries made by another part of the store (a CouchDB dump), stored
    /// in the order given and listed by name in the manifest.
    Prepared(Prepared),
}

/// Entries and the source description for [`Source::Prepared`].
pub struct Prepared {
    pub(crate) info: SourceInfo,
    pub(crate) entries: Vec<Entry>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Prepared({:?}, {} entries)",
            self.info.kind,
            self.entries.len()
        )
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Paths(p) => write!(f, "Paths({p:?})"),
            Source::Stdin { name } => write!(f, "Stdin({name})"),
            Source::Command { command, name } => write!(f, "Command({command:?} as {name})"),
            Source::Reader { name, .. } => write!(f, "Reader({name})"),
            Source::Prepared(p) => p.fmt(f),
        }
    }
}

/// One thing to store, in name order.
pub(crate) struct Entry {
    pub name: String,
    pub kind: ItemKind,
    pub mode: Option<u32>,
    pub mtime: Option<Timestamp>,
    pub target: Option<String>,
    /// Chunking for a new item of this name (else the policy decides by
    /// measuring); an item of this name in an earlier snapshot keeps its own.
    pub chunker: Option<ChunkerParams>,
    pub content: Option<Content>,
}

/// Where an entry's bytes come from.
pub(crate) enum Content {
    /// A regular file, and its directory's identity when it was listed.
    File(PathBuf, Option<FileId>),
    Stdin,
    Command(String),
    Reader(Box<dyn Read + Send>),
}

impl Content {
    /// Opens the content for reading.
    pub fn open(self, item: &str) -> Result<Box<dyn Read + Send>> {
        let fail = |detail: String| Error::Source {
            item: item.to_string(),
            detail,
        };
        Ok(match self {
            Content::File(path, dir) => Box::new(StableFile::open(&path, dir, item)?.0),
            Content::Stdin => Box::new(io::stdin()),
            Content::Command(command) => Box::new(
                CommandReader::spawn(&command)
                    .map_err(|e| fail(format!("cannot start `{}`: {e}", redacted(&command))))?,
            ),
            Content::Reader(r) => r,
        })
    }
}

impl Source {
    /// What the manifest records of this source.
    pub(crate) fn info(&self) -> SourceInfo {
        match self {
            Source::Paths(_) => SourceInfo {
                kind: SourceKind::Files,
                command: None,
                exit_status: None,
                url: None,
            },
            Source::Stdin { .. } | Source::Reader { .. } => SourceInfo {
                kind: SourceKind::Stdin,
                command: None,
                exit_status: None,
                url: None,
            },
            Source::Command { command, .. } => SourceInfo {
                kind: SourceKind::Command,
                command: Some(redacted(command)),
                exit_status: Some(0),
                url: None,
            },
            Source::Prepared(p) => p.info.clone(),
        }
    }

    /// The entries to store, sorted by name; fails before anything is stored
    /// if a name is unusable or two arguments would give the same name.
    pub(crate) fn into_entries(self) -> Result<Vec<Entry>> {
        let single = |name: String, content: Content| -> Result<Vec<Entry>> {
            validate_item_name(&name).map_err(Error::invalid)?;
            Ok(vec![Entry {
                name,
                kind: ItemKind::File,
                mode: None,
                mtime: None,
                target: None,
                chunker: None,
                content: Some(content),
            }])
        };
        let mut entries = match self {
            Source::Stdin { name } => return single(name, Content::Stdin),
            Source::Command { command, name } => return single(name, Content::Command(command)),
            Source::Reader { name, reader } => return single(name, Content::Reader(reader)),
            Source::Prepared(p) => {
                for e in &p.entries {
                    validate_item_name(&e.name).map_err(Error::invalid)?;
                }
                return Ok(p.entries);
            }
            Source::Paths(paths) => {
                if paths.is_empty() {
                    return Err(Error::invalid(
                        "nothing to back up: give paths, `-` or --command",
                    ));
                }
                let mut entries = Vec::new();
                for path in &paths {
                    let base = base_name(path)?;
                    walk(path, &base, None, &mut entries)?;
                }
                entries
            }
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::invalid(format!(
                "two arguments would both be stored as {:?}; back them up separately or from their parent directory",
                w[0].name
            )));
        }
        Ok(entries)
    }
}

/// The name an argument is stored under: its last component.
fn base_name(path: &Path) -> Result<String> {
    let absolute = std::fs::canonicalize(path).map_err(|e| Error::Source {
        item: path.display().to_string(),
        detail: format!("cannot read: {e}"),
    })?;
    let name = match std::fs::symlink_metadata(path) {
        // A symlink argument is stored as itself, under its own name.
        Ok(m) if m.file_type().is_symlink() => path.file_name().map(|n| n.to_os_string()),
        _ => absolute.file_name().map(|n| n.to_os_string()),
    };
    let name = name.ok_or_else(|| {
        Error::invalid(format!(
            "cannot back up {} itself; name its contents",
            path.display()
        ))
    })?;
    name.into_string()
        .map_err(|n| Error::invalid(format!("file name {n:?} is not UTF-8")))
}

/// A file's identity: device and inode.
pub(crate) type FileId = (u64, u64);

fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Lists `path` (stored as `name`), which lies in the directory `dir` as
/// listed (`None` for an argument).
fn walk(path: &Path, name: &str, dir: Option<FileId>, out: &mut Vec<Entry>) -> Result<()> {
    let fail = |detail: String| Error::Source {
        item: name.to_string(),
        detail,
    };
    validate_item_name(name).map_err(Error::invalid)?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| Timestamp::try_from(t).ok());
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        Some(meta.permissions().mode() & 0o7777)
    };
    #[cfg(not(unix))]
    let mode = None;
    let ft = meta.file_type();
    let mut entry = Entry {
        name: name.to_string(),
        kind: ItemKind::File,
        mode,
        mtime,
        target: None,
        chunker: None,
        content: None,
    };
    if ft.is_dir() {
        entry.kind = ItemKind::Dir;
        out.push(entry);
        let mut children: Vec<(String, PathBuf)> = Vec::new();
        for child in std::fs::read_dir(path).map_err(|e| fail(format!("cannot list: {e}")))? {
            let child = child.map_err(|e| fail(format!("cannot list: {e}")))?;
            let child_name = child
                .file_name()
                .into_string()
                .map_err(|n| fail(format!("contains a file name that is not UTF-8: {n:?}")))?;
            children.push((child_name, child.path()));
        }
        children.sort();
        for (child_name, child_path) in children {
            walk(
                &child_path,
                &format!("{name}/{child_name}"),
                Some(file_id(&meta)),
                out,
            )?;
        }
    } else if ft.is_symlink() {
        let target =
            std::fs::read_link(path).map_err(|e| fail(format!("cannot read link: {e}")))?;
        entry.kind = ItemKind::Symlink;
        entry.target = Some(
            target
                .into_os_string()
                .into_string()
                .map_err(|t| fail(format!("link target {t:?} is not UTF-8")))?,
        );
        out.push(entry);
    } else if ft.is_file() {
        entry.content = Some(Content::File(path.to_owned(), dir));
        out.push(entry);
    } else if dir.is_none() {
        // An argument that is a FIFO, socket or device would give an empty
        // or endless item: say so instead of writing a snapshot without it.
        return Err(fail(format!(
            "{} is not a regular file, directory or symlink (a FIFO, socket or device); to \
             store what it gives, use `--command 'cat {}'`",
            path.display(),
            path.display()
        )));
    } else {
        tracing::warn!(
            "skipping {}: not a regular file, directory or symlink",
            path.display()
        );
    }
    Ok(())
}

/// What identifies a file's content without reading it: compared before
/// and after a read, a difference means the file changed under the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileState {
    pub len: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub inode: (u64, u64),
}

impl FileState {
    fn of(meta: &std::fs::Metadata) -> FileState {
        use std::os::unix::fs::MetadataExt;
        FileState {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// A file read to its end that fails at the end if the file changed while
/// it was read (size, mtime, ctime, or the bytes read differ from the size
/// at open), so a torn file is never stored as if it were whole.
pub(crate) struct StableFile {
    file: std::fs::File,
    item: String,
    before: FileState,
    read: u64,
    changed: Arc<std::sync::atomic::AtomicBool>,
}

/// Set by a [`StableFile`] that found its file changed.
pub(crate) type ChangedFlag = Arc<std::sync::atomic::AtomicBool>;

impl StableFile {
    /// Opens `path` for item `item`; the flag tells afterwards whether the
    /// read failed because the file changed (worth reading again).
    ///
    /// What is opened is what was listed: a regular file (never through a
    /// symlink, never a FIFO or device, which could block or never end) in
    /// the directory `dir` as it was listed (a directory replaced by a
    /// link meanwhile is refused): someone owning part of the tree cannot
    /// make the backup read a file elsewhere.
    pub fn open(path: &Path, dir: Option<FileId>, item: &str) -> Result<(StableFile, ChangedFlag)> {
        let refuse = |detail: String| Error::Source {
            item: item.to_string(),
            detail: format!("cannot open {}: {detail}", path.display()),
        };
        let fail = |e: io::Error| refuse(e.to_string());
        let replaced = "it was replaced since the backup listed it (by a link, a FIFO or a \
                        device, or a directory above it by a link or a FIFO), so nothing is read \
                        through it; run the backup again, and if this recurs, find what \
                        replaces it";
        let file = match dir {
            Some(expected) => {
                let parent = path.parent().ok_or_else(|| refuse("no directory".into()))?;
                // A directory only, never blocking: the one listed may have
                // been replaced by a FIFO or a device meanwhile.
                let flags = rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NONBLOCK
                    | rustix::fs::OFlags::CLOEXEC;
                let dir = match rustix::fs::open(parent, flags, rustix::fs::Mode::empty()) {
                    Ok(fd) => std::fs::File::from(fd),
                    Err(rustix::io::Errno::NOTDIR) => return Err(refuse(replaced.into())),
                    Err(e) => return Err(fail(e.into())),
                };
                if file_id(&dir.metadata().map_err(fail)?) != expected {
                    return Err(refuse(replaced.into()));
                }
                let leaf = path
                    .file_name()
                    .ok_or_else(|| refuse("no file name".into()))?;
                rustix::fs::openat(&dir, leaf, read_flags(), rustix::fs::Mode::empty())
                    .map(std::fs::File::from)
            }
            None => rustix::fs::open(path, read_flags(), rustix::fs::Mode::empty())
                .map(std::fs::File::from),
        };
        let file = match file {
            Ok(f) => f,
            Err(rustix::io::Errno::LOOP) => return Err(refuse(replaced.into())),
            Err(e) => return Err(fail(e.into())),
        };
        let meta = file.metadata().map_err(fail)?;
        if !meta.is_file() {
            return Err(refuse(replaced.into()));
        }
        let before = FileState::of(&meta);
        let changed = ChangedFlag::default();
        let reader = StableFile {
            file,
            item: item.to_string(),
            before,
            read: 0,
            changed: Arc::clone(&changed),
        };
        Ok((reader, changed))
    }

    /// The file's state when it was opened.
    pub fn state(&self) -> FileState {
        self.before
    }
}

impl Read for StableFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        if n == 0 && !buf.is_empty() {
            let after = FileState::of(&self.file.metadata()?);
            if after != self.before || self.read != self.before.len {
                self.changed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(io::Error::other(format!(
                    "{} changed while it was read ({} bytes at open, {} read, {} now{})",
                    self.item,
                    self.before.len,
                    self.read,
                    after.len,
                    if after.mtime != self.before.mtime || after.ctime != self.before.ctime {
                        ", modified meanwhile"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(n)
    }
}

/// Read-only, never following a final symlink, never blocking on a FIFO.
fn read_flags() -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

/// A command's standard output; at its end, the command's exit status is
/// checked and a failure becomes a read error carrying its stderr tail.
struct CommandReader {
    command: String,
    child: Child,
    stdout: ChildStdout,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    finished: bool,
}

impl CommandReader {
    fn spawn(command: &str) -> io::Result<CommandReader> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr"))?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.extend(&buf[..n]);
                let excess = t.len().saturating_sub(STDERR_TAIL_LEN);
                t.drain(..excess);
            }
        });
        Ok(CommandReader {
            command: redacted(command),
            child,
            stdout,
            stderr_tail,
            stderr_thread: Some(stderr_thread),
            finished: false,
        })
    }

    fn stderr_tail(&mut self) -> String {
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim_end().to_string()
    }
}

impl Read for CommandReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        self.finished = true;
        let status = self.child.wait()?;
        if status.success() {
            return Ok(0);
        }
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        let tail = self.stderr_tail();
        let tail = if tail.is_empty() {
            "; it wrote nothing to stderr".to_string()
        } else {
            format!("; its stderr ended with:\n{tail}")
        };
        Err(io::Error::other(format!(
            "command `{}` {how}{tail}",
            self.command
        )))
    }
}

impl Drop for CommandReader {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
