//! What a backup reads: files and directories, standard input, or a command's output.
//!
//! A source becomes a sorted list of entries; file entries are opened one at
//! a time as the backup reaches them. A command's failure surfaces as a read
//! error at the end of its output, so it is handled like any broken stream.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::error::{Error, Result};
use crate::format::chunker::ChunkerParams;
use rustix::fs::OFlags;

use crate::format::dir::{DirEntry, Node, Time};
use crate::format::manifest::{ItemKind, SourceInfo, SourceKind, validate_item_name};
use crate::id::BlobId;
use crate::ops::fsmeta::{self, OwnerNames};
use crate::redact::redacted;

/// Keep this much of a command's stderr for the error message.
const STDERR_TAIL_LEN: usize = 4096;

/// How a command is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// `sh -c LINE`: pipes, redirections and variables work.
    Shell(String),
    /// A program and its arguments, started without a shell (an image
    /// without one; arguments that must not be re-split).
    Argv(Vec<String>),
}

impl CommandLine {
    /// Whether it holds a secret [`CommandLine::shown`] hides.
    pub fn holds_secret(&self) -> bool {
        match self {
            CommandLine::Shell(line) => crate::redact::redact_command(line).is_some(),
            CommandLine::Argv(argv) => crate::redact::redact_argv(argv).is_some(),
        }
    }

    /// As a snapshot records it and messages show it: the shell line, or the
    /// arguments quoted as a shell would need them; secrets replaced.
    pub fn shown(&self) -> String {
        match self {
            CommandLine::Shell(line) => redacted(line),
            CommandLine::Argv(argv) => {
                quote_words(&crate::redact::redact_argv(argv).unwrap_or_else(|| argv.clone()))
            }
        }
    }

    fn command(&self) -> io::Result<Command> {
        Ok(match self {
            CommandLine::Shell(line) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(line);
                c
            }
            CommandLine::Argv(argv) => {
                let (program, args) = argv
                    .split_first()
                    .ok_or_else(|| io::Error::other("an empty command"))?;
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        })
    }
}

/// Words joined as `sh` would read them back.
pub fn quote_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One word as `sh` reads it back: plain where safe, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

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
    /// A command's standard output as one item.
    Command {
        /// The command line.
        command: CommandLine,
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
    /// Entries made by the caller (CouchDB dumps): contents read in the
    /// order given, listed by name in the tree.
    Prepared(Prepared),
}

/// Entries and the source description for [`Source::Prepared`].
pub struct Prepared {
    pub(crate) info: SourceInfo,
    pub(crate) entries: Vec<Entry>,
}

impl Prepared {
    /// A source that stores `entries` and records `info` as its
    /// description in the manifest. Contents are read one after another in
    /// the order given (whatever their names), so a producer that fills
    /// its streams in that order never waits for one the backup has not
    /// reached; the tree lists them by name.
    pub fn new(info: SourceInfo, entries: Vec<Entry>) -> Prepared {
        Prepared { info, entries }
    }
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
            Source::Command { command, name } => {
                write!(f, "Command({:?} as {name})", command.shown())
            }
            Source::Reader { name, .. } => write!(f, "Reader({name})"),
            Source::Prepared(p) => p.fmt(f),
        }
    }
}

/// One thing to store, in name order. Outside the store, entries of a
/// [`Prepared`] source are made with [`Entry::reader`] and [`Entry::stored`].
pub struct Entry {
    pub(crate) name: String,
    pub(crate) kind: ItemKind,
    pub(crate) mode: Option<u32>,
    pub(crate) mtime: Option<Timestamp>,
    pub(crate) target: Option<String>,
    /// Chunking for a new item of this name (else the policy decides by
    /// measuring); an item of this name in an earlier snapshot keeps its own.
    pub(crate) chunker: Option<ChunkerParams>,
    pub(crate) content: Option<Content>,
}

impl Entry {
    /// A file item `name` whose bytes are read from `reader`; `chunker`
    /// cuts a new item of this name (`None`: the policy decides by
    /// measuring), an item of this name in an earlier snapshot keeps its own.
    pub fn reader(
        name: String,
        chunker: Option<ChunkerParams>,
        reader: Box<dyn Read + Send>,
    ) -> Entry {
        Entry {
            name,
            kind: ItemKind::File,
            mode: None,
            mtime: None,
            target: None,
            chunker,
            content: Some(Content::Reader(reader)),
        }
    }

    /// A file item `name` that takes content this key stored before as it
    /// is, unread (see [`StoredContent`]); `chunker` as for [`Entry::reader`].
    pub fn stored(name: String, chunker: Option<ChunkerParams>, stored: StoredContent) -> Entry {
        Entry {
            name,
            kind: ItemKind::File,
            mode: None,
            mtime: None,
            target: None,
            chunker,
            content: Some(Content::Stored(stored)),
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("chunker", &self.chunker)
            .finish_non_exhaustive()
    }
}

/// Where an entry's bytes come from.
pub(crate) enum Content {
    /// A regular file, as listed.
    File(FileAt),
    Stdin,
    Command(CommandLine),
    Reader(Box<dyn Read + Send>),
    /// Content this key stored before, taken as it is, unread (a CouchDB
    /// database unchanged since its last backup). The backup takes it only
    /// if an index object names its root.
    Stored(StoredContent),
}

/// Where stored content is: what a file entry's node names (as an earlier
/// snapshot's [`Item`](crate::format::manifest::Item) records it). A backup
/// takes it only if an index object names its root, else it fails.
#[derive(Debug, Clone, Copy)]
pub struct StoredContent {
    /// The chunk-list root, or the one chunk when `one_chunk`.
    pub root: BlobId,
    /// Whether `root` is the content's one chunk rather than a chunk list.
    pub one_chunk: bool,
    /// The number of chunks.
    pub chunks: u64,
    /// The content's length in bytes.
    pub len: u64,
    /// How the content was cut.
    pub chunker: ChunkerParams,
}

impl Content {
    /// Opens the content for reading.
    pub fn open(self, item: &str) -> Result<Box<dyn Read + Send>> {
        let fail = |detail: String| Error::Source {
            item: item.to_string(),
            detail,
        };
        Ok(match self {
            Content::File(at) => Box::new(StableFile::open_at(&at, item)?.0),
            Content::Stdin => Box::new(io::stdin()),
            Content::Command(command) => Box::new(
                CommandReader::spawn(&command)
                    .map_err(|e| fail(format!("cannot start `{}`: {e}", command.shown())))?,
            ),
            Content::Reader(r) => r,
            Content::Stored(_) => {
                return Err(Error::Bug(format!("{item}: stored content is not read")));
            }
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
                command: Some(command.shown()),
                exit_status: Some(0),
                url: None,
            },
            Source::Prepared(p) => p.info.clone(),
        }
    }

    /// The top-level names this source stores, sorted (the snapshot's
    /// `paths`; a backup's parent has the same).
    pub(crate) fn paths(&self) -> Result<Vec<String>> {
        let top = |name: &str| name.split('/').next().unwrap_or_default().to_string();
        let mut names = match self {
            Source::Paths(paths) => paths
                .iter()
                .map(|p| base_name(p))
                .collect::<Result<Vec<_>>>()?,
            Source::Stdin { name } | Source::Command { name, .. } | Source::Reader { name, .. } => {
                vec![top(name)]
            }
            Source::Prepared(p) => p.entries.iter().map(|e| top(&e.name)).collect(),
        };
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The entries to store, in tree order (see [`SourceEntry`]); fails
    /// before anything is stored if a name is unusable or two arguments
    /// would give the same name. Files and directories are listed lazily,
    /// one directory at a time.
    pub(crate) fn into_tree(
        self,
        exclude: &Exclude,
    ) -> Result<Box<dyn Iterator<Item = Result<SourceEntry>> + Send>> {
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
        let entries = match self {
            Source::Stdin { name } => single(name, Content::Stdin)?,
            Source::Command { command, name } => single(name, Content::Command(command))?,
            Source::Reader { name, reader } => single(name, Content::Reader(reader))?,
            Source::Prepared(p) => {
                for e in &p.entries {
                    validate_item_name(&e.name).map_err(Error::invalid)?;
                }
                p.entries
            }
            Source::Paths(paths) => return Ok(Box::new(FsWalker::new(&paths, exclude.clone())?)),
        };
        Ok(Box::new(tree_order(entries)?.into_iter().map(Ok)))
    }
}

/// One entry to store, in tree order: pre-order, each directory's entries
/// in bytewise name order, a directory's own entry before what it holds.
pub(crate) struct SourceEntry {
    /// Directories above it.
    pub depth: usize,
    /// Its path, `/`-separated, for messages (lossy UTF-8).
    pub path: String,
    /// Its name and metadata; a file's or directory's `node` is filled in
    /// when it is stored.
    pub entry: DirEntry,
    /// Where a file's bytes come from.
    pub content: Option<Content>,
    /// Chunking for a new item of this name (else the policy decides).
    pub chunker: Option<ChunkerParams>,
    /// A prepared source's entry: its place in the caller's list, which is
    /// the order contents are read in (see [`Prepared::new`]).
    pub given: Option<usize>,
}

/// Sorts named entries into tree order, adding a bare directory for every
/// ancestor not listed.
fn tree_order(entries: Vec<Entry>) -> Result<Vec<SourceEntry>> {
    let mut entries: Vec<(Vec<String>, Entry, usize)> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e.name.split('/').map(str::to_string).collect(), e, i))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::invalid(format!(
            "two entries are both named {:?}",
            w[0].1.name
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    let mut open: Vec<String> = Vec::new();
    for (parts, e, given) in entries {
        let (name, parents) = parts
            .split_last()
            .ok_or_else(|| Error::invalid("an empty name"))?;
        let common = open.iter().zip(parents).take_while(|(a, b)| a == b).count();
        open.truncate(common);
        for (depth, part) in parents.iter().enumerate().skip(common) {
            out.push(SourceEntry {
                depth,
                path: parents[..=depth].join("/"),
                entry: DirEntry::bare(
                    part.as_bytes(),
                    Node::Dir {
                        tree: BlobId([0; 32]),
                    },
                ),
                content: None,
                chunker: None,
                given: None,
            });
            open.push(part.clone());
        }
        let node = match e.kind {
            ItemKind::File => placeholder_file(),
            ItemKind::Dir => Node::Dir {
                tree: BlobId([0; 32]),
            },
            ItemKind::Symlink => Node::Symlink {
                target: e.target.clone().unwrap_or_default().into_bytes(),
            },
        };
        if e.kind == ItemKind::Dir {
            open.push(name.clone());
        }
        out.push(SourceEntry {
            depth: parents.len(),
            path: e.name,
            entry: DirEntry {
                mode: e.mode,
                mtime: e.mtime.map(Time::from_timestamp),
                ..DirEntry::bare(name.as_bytes(), node)
            },
            content: e.content,
            chunker: e.chunker,
            given: Some(given),
        });
    }
    Ok(out)
}

/// A file's node before its content is stored.
pub(crate) fn placeholder_file() -> Node {
    Node::File {
        root: BlobId([0; 32]),
        chunks: 0,
        chunker: ChunkerParams::DEFAULT,
    }
}

/// The name an argument is stored under: its last component.
fn base_name(path: &Path) -> Result<String> {
    let (_, name) = argument(path)?;
    name.into_string()
        .map_err(|n| Error::invalid(format!("file name {n:?} is not UTF-8")))
}

/// An argument's directory (to open) and name in it: a symlink argument
/// is stored as itself, anything else by its canonical path's last component.
fn argument(path: &Path) -> Result<(PathBuf, std::ffi::OsString)> {
    let absolute = std::fs::canonicalize(path).map_err(|e| Error::Source {
        item: path.display().to_string(),
        detail: format!("cannot read: {e}"),
    })?;
    let chosen = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => path.to_path_buf(),
        _ => absolute,
    };
    let name = chosen
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| {
            Error::invalid(format!(
                "cannot back up {} itself; name its contents",
                path.display()
            ))
        })?;
    let dir = match chosen.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// A file's identity: device and inode.
pub(crate) type FileId = (u64, u64);

fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// One directory being listed.
struct Level {
    fd: Arc<OwnedFd>,
    path: String,
    names: Vec<OsString>,
    next: usize,
}

/// Lists files and directories lazily in tree order: one directory's names
/// at a time, every name looked up relative to its directory's descriptor
/// and never through a symlink.
pub(crate) struct FsWalker {
    /// The arguments not reached yet: (directory, name), by name.
    roots: VecDeque<(PathBuf, OsString)>,
    /// The directory holding the argument being walked (for `exclude`).
    root_dir: PathBuf,
    stack: Vec<Level>,
    names: OwnerNames,
    exclude: Exclude,
}

/// Files and directories a backup leaves out: glob patterns. A pattern
/// without `/` is matched against every name (`*.log`, `cache`, `.git`);
/// one with `/` against the whole absolute path (`/srv/volumes/*/tmp`,
/// `/srv/**/node_modules`). `*` and `?` stay within one name, `**` spans
/// directories. A directory left out is not read at all.
#[derive(Debug, Clone, Default)]
pub struct Exclude {
    names: Option<globset::GlobSet>,
    paths: Option<globset::GlobSet>,
}

impl Exclude {
    /// From patterns; an invalid one is an error naming it.
    pub fn new(patterns: &[String]) -> Result<Exclude> {
        let mut names = globset::GlobSetBuilder::new();
        let mut paths = globset::GlobSetBuilder::new();
        let (mut any_name, mut any_path) = (false, false);
        for p in patterns {
            let glob = globset::GlobBuilder::new(p.trim_end_matches('/'))
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::invalid(format!("--exclude {p:?}: {e}")))?;
            if p.trim_end_matches('/').contains('/') {
                if !p.starts_with('/') && !p.starts_with("**") {
                    return Err(Error::invalid(format!(
                        "--exclude {p:?}: a pattern with `/` matches whole paths: start it with `/` \
                         (an absolute path) or `**/`"
                    )));
                }
                paths.add(glob);
                any_path = true;
            } else {
                names.add(glob);
                any_name = true;
            }
        }
        let build = |b: globset::GlobSetBuilder, any: bool| -> Result<Option<globset::GlobSet>> {
            if !any {
                return Ok(None);
            }
            b.build()
                .map(Some)
                .map_err(|e| Error::invalid(format!("--exclude: {e}")))
        };
        Ok(Exclude {
            names: build(names, any_name)?,
            paths: build(paths, any_path)?,
        })
    }

    /// Whether the entry `name` at absolute path `path` is left out.
    pub fn excludes(&self, name: &[u8], path: &Path) -> bool {
        let by_name = self
            .names
            .as_ref()
            .is_some_and(|g| g.is_match(Path::new(std::ffi::OsStr::from_bytes(name))));
        by_name || self.paths.as_ref().is_some_and(|g| g.is_match(path))
    }
}

impl FsWalker {
    fn new(paths: &[PathBuf], exclude: Exclude) -> Result<FsWalker> {
        if paths.is_empty() {
            return Err(Error::invalid(
                "nothing to back up: give paths, `-` or --command",
            ));
        }
        let mut roots = paths
            .iter()
            .map(|p| argument(p))
            .collect::<Result<Vec<_>>>()?;
        roots.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
        if let Some(w) = roots.windows(2).find(|w| w[0].1 == w[1].1) {
            return Err(Error::invalid(format!(
                "two arguments would both be stored as {:?}; back them up separately or from their parent directory",
                w[0].1
            )));
        }
        for (_, name) in &roots {
            if name.to_str().is_none() {
                return Err(Error::invalid(format!("file name {name:?} is not UTF-8")));
            }
        }
        Ok(FsWalker {
            roots: roots.into(),
            root_dir: PathBuf::new(),
            stack: Vec::new(),
            names: OwnerNames::default(),
            exclude,
        })
    }

    /// Looks up `name` in `dir` (at `depth`); a directory is opened and
    /// pushed. `None` for what is not stored (a socket, a file that vanished).
    fn visit(
        &mut self,
        dir: &Arc<OwnedFd>,
        dir_path: &str,
        name: OsString,
        depth: usize,
        argument: Option<&Path>,
    ) -> Result<Option<SourceEntry>> {
        let path = if dir_path.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{dir_path}/{}", name.to_string_lossy())
        };
        if self
            .exclude
            .excludes(name.as_bytes(), &self.root_dir.join(&path))
        {
            tracing::debug!("{path}: excluded");
            return Ok(None);
        }
        // An argument is named as given.
        let shown = argument.map_or_else(|| path.clone(), |p| p.display().to_string());
        let fail = |detail: String| Error::Source {
            item: shown.clone(),
            detail,
        };
        let argument = argument.is_some();
        let st = match fsmeta::stat_at(dir.as_fd(), &name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !argument => {
                tracing::warn!("{path} vanished while the backup listed its directory; skipped");
                return Ok(None);
            }
            Err(e) => return Err(fail(format!("cannot read: {e}"))),
        };
        let Some(mut entry) =
            fsmeta::entry_from_stat(name.as_bytes().to_vec(), &st, &mut self.names)
        else {
            if argument {
                return Err(fail("is a socket: nothing to back up".into()));
            }
            tracing::warn!("skipping {path}: a socket");
            return Ok(None);
        };
        let mut content = None;
        match entry.node {
            Node::Dir { .. } if depth >= MAX_SOURCE_DEPTH => {
                // Readers refuse deeper trees (format-spec §10.2), and one
                // descriptor is held per level: a user's nest of directories
                // must not make the whole snapshot unrestorable.
                tracing::warn!(
                    "{path}: more than {MAX_SOURCE_DEPTH} directories deep; stored empty, what it holds is skipped"
                );
            }
            Node::Dir { .. } => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir.as_fd(), &name, flags, rustix::fs::Mode::empty())
                    .map_err(|e| fail(format!("cannot open: {e}")))?;
                let now = rustix::fs::fstat(&fd).map_err(|e| fail(format!("cannot read: {e}")))?;
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                    return Err(fail(
                        "was replaced while the backup listed it; run the backup again".into(),
                    ));
                }
                entry.xattrs = fsmeta::read_xattrs(fd.as_fd()).unwrap_or_else(|e| {
                    tracing::warn!("{path}: cannot read extended attributes: {e}");
                    Vec::new()
                });
                let names = list(&fd).map_err(|e| fail(format!("cannot list: {e}")))?;
                self.stack.push(Level {
                    fd: Arc::new(fd),
                    path: path.clone(),
                    names,
                    next: 0,
                });
            }
            Node::Symlink { ref mut target } => {
                *target = fsmeta::read_link_at(dir.as_fd(), &name)
                    .map_err(|e| fail(format!("cannot read link: {e}")))?;
            }
            Node::File { .. } => {
                content = Some(Content::File(FileAt {
                    dir: Arc::clone(dir),
                    name: name.clone(),
                    id: (st.st_dev, st.st_ino),
                }));
            }
            _ if argument => {
                // An argument that is a FIFO or device would give an empty
                // or endless item: say so instead of writing a snapshot without it.
                return Err(fail(format!(
                    "is not a regular file, directory or symlink (a FIFO or device); to store \
                     what it gives, use `--command 'cat {shown}'`"
                )));
            }
            _ => {}
        }
        if !matches!(entry.node, Node::Dir { .. }) {
            let proc_path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(&name);
            entry.xattrs = fsmeta::read_xattrs_path(&proc_path).unwrap_or_else(|e| {
                tracing::warn!("{path}: cannot read extended attributes: {e}");
                Vec::new()
            });
        }
        cap_xattrs(&path, &mut entry.xattrs);
        Ok(Some(SourceEntry {
            depth,
            path,
            entry,
            content,
            chunker: None,
            given: None,
        }))
    }

    fn step(&mut self) -> Result<Option<SourceEntry>> {
        loop {
            if let Some(top) = self.stack.last_mut() {
                if top.next == top.names.len() {
                    self.stack.pop();
                    continue;
                }
                let name = std::mem::take(&mut top.names[top.next]);
                top.next += 1;
                let (fd, path) = (Arc::clone(&top.fd), top.path.clone());
                let depth = self.stack.len();
                if let Some(e) = self.visit(&fd, &path, name, depth, None)? {
                    return Ok(Some(e));
                }
                continue;
            }
            let Some((dir, name)) = self.roots.pop_front() else {
                return Ok(None);
            };
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = rustix::fs::open(&dir, flags, rustix::fs::Mode::empty()).map_err(|e| {
                Error::Source {
                    item: dir.display().to_string(),
                    detail: format!("cannot open: {e}"),
                }
            })?;
            let given = dir.join(&name);
            self.root_dir = dir;
            if let Some(e) = self.visit(&Arc::new(fd), "", name, 0, Some(&given))? {
                return Ok(Some(e));
            }
        }
    }
}

impl Iterator for FsWalker {
    type Item = Result<SourceEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.stack.clear();
                self.roots.clear();
                Some(Err(e))
            }
        }
    }
}

/// Directories deeper than this are stored empty (with a warning).
pub(crate) const MAX_SOURCE_DEPTH: usize = 256;
/// Extended attributes of one entry beyond this many bytes are dropped,
/// largest first (with a warning): an entry must fit a directory node.
const MAX_XATTR_BYTES: usize = 512 << 10;

/// Drops the largest extended attributes until the rest fit [`MAX_XATTR_BYTES`].
fn cap_xattrs(path: &str, xattrs: &mut Vec<crate::format::dir::Xattr>) {
    let total = |x: &[crate::format::dir::Xattr]| -> usize {
        x.iter().map(|a| a.name.len() + a.value.len() + 5).sum()
    };
    while total(xattrs) > MAX_XATTR_BYTES {
        let Some((at, _)) = xattrs.iter().enumerate().max_by_key(|(_, a)| a.value.len()) else {
            return;
        };
        let dropped = xattrs.remove(at);
        tracing::warn!(
            "{path}: extended attribute {} ({} bytes) not stored: the entry's attributes exceed {} KiB",
            String::from_utf8_lossy(&dropped.name),
            dropped.value.len(),
            MAX_XATTR_BYTES >> 10
        );
    }
}

/// A directory's names, sorted bytewise, without `.` and `..`.
fn list(fd: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// A listed regular file: its directory, its name in it, and its identity
/// when listed.
pub(crate) struct FileAt {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
    pub id: FileId,
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
    /// Opens the listed file `at` for item `item`; the flag tells
    /// afterwards whether the read failed because the file changed (worth
    /// reading again).
    ///
    /// What is opened is what was listed: a regular file with the identity
    /// it had when listed, looked up in the directory as listed (held open
    /// since), never through a symlink, never a FIFO or device, which
    /// could block or never end: someone owning part of the tree cannot
    /// make the backup read a file elsewhere.
    pub fn open_at(at: &FileAt, item: &str) -> Result<(StableFile, ChangedFlag)> {
        let refuse = |detail: String| Error::Source {
            item: item.to_string(),
            detail: format!("cannot open: {detail}"),
        };
        let fail = |e: io::Error| refuse(e.to_string());
        let replaced = "it was replaced since the backup listed it (by a link, a FIFO, a \
                        device or another file), so nothing is read through it; run the backup \
                        again, and if this recurs, find what replaces it";
        let file = match rustix::fs::openat(
            at.dir.as_fd(),
            &at.name,
            read_flags(),
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => std::fs::File::from(fd),
            Err(rustix::io::Errno::LOOP) => return Err(refuse(replaced.into())),
            Err(e) => return Err(fail(e.into())),
        };
        let meta = file.metadata().map_err(fail)?;
        if !meta.is_file() || file_id(&meta) != at.id {
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
    fn spawn(command: &CommandLine) -> io::Result<CommandReader> {
        let mut child = command
            .command()?
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
            command: command.shown(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_run_without_a_shell_and_show_quoted() {
        let words = ["printf", "%s|", "a b;c", "it's", "$HOME"];
        let line = CommandLine::Argv(words.iter().map(|w| w.to_string()).collect());
        let mut out = String::new();
        Content::Command(line.clone())
            .open("x")
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "a b;c|it's|$HOME|");
        assert_eq!(line.shown(), r#"printf '%s|' 'a b;c' 'it'\''s' '$HOME'"#);
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("--repo"), "--repo");
        // Read back by a shell, the shown line runs the same words.
        let mut again = String::new();
        Content::Command(CommandLine::Shell(line.shown()))
            .open("x")
            .unwrap()
            .read_to_string(&mut again)
            .unwrap();
        assert_eq!(again, out);
        let missing = CommandLine::Argv(vec!["/nonexistent/pg_dump".into()]);
        let err = Content::Command(missing).open("db").err().unwrap();
        assert!(
            err.to_string()
                .contains("cannot start `/nonexistent/pg_dump`"),
            "{err}"
        );
    }

    fn walked(root: &Path, patterns: &[&str]) -> Vec<String> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let exclude = Exclude::new(&patterns).unwrap();
        Source::Paths(vec![root.to_path_buf()])
            .into_tree(&exclude)
            .unwrap()
            .map(|e| e.unwrap().path)
            .collect()
    }

    #[test]
    fn excluded_names_and_paths_are_left_out_directories_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        for (file, text) in [
            ("a/keep.txt", "k"),
            ("a/x.log", "l"),
            ("a/cache/big", "b"),
            ("b/tmp/t", "t"),
            ("b/log.txt", "n"),
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let tmp_path = format!("{}/b/tmp", root.display());
        let got = walked(&root, &["*.log", "cache", &tmp_path]);
        assert_eq!(
            got,
            ["vol", "vol/a", "vol/a/keep.txt", "vol/b", "vol/b/log.txt"]
        );
        let all = walked(&root, &[]);
        assert_eq!(all.len(), 10);
        let deep = walked(&root, &["**/cache/*"]);
        assert!(
            deep.contains(&"vol/a/cache".to_string())
                && !deep.contains(&"vol/a/cache/big".to_string())
        );
    }

    #[test]
    fn bad_patterns_are_refused_by_name() {
        let e = Exclude::new(&["a/[b".to_string()]).unwrap_err();
        assert!(e.to_string().contains("a/[b"), "{e}");
        let e = Exclude::new(&["srv/tmp".to_string()]).unwrap_err();
        assert!(e.to_string().contains("start it with `/`"), "{e}");
    }
}
