//! The one error type of the store.
//!
//! Each variant says what the caller can do about it, carries the object it
//! concerns, and its message ends with the next step for the operator. The
//! CLI maps [`ErrorKind`] to exit codes; nothing else inspects messages.

use std::io;
use std::path::PathBuf;

/// What kind of failure this is: decides the exit code and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// An argument or input the user gave is malformed.
    InvalidInput,
    /// The repository, a snapshot or a requested object does not exist.
    NotFound,
    /// Data in the repository is damaged or missing.
    Corrupt,
    /// A snapshot's signature does not verify, or its signer is not trusted.
    BadSignature,
    /// A key file is missing, unreadable or malformed.
    Key,
    /// The backup source failed: a command exited non-zero, a file was unreadable.
    Source,
    /// A write failed because the storage is full or over quota.
    StorageFull,
    /// The storage refused the credentials.
    AccessDenied,
    /// The storage could not be reached or failed while answering.
    Unreachable,
    /// Something that must be created fresh already exists.
    AlreadyExists,
    /// The storage or the repository needs a feature this build lacks.
    Unsupported,
    /// Local I/O failed outside the repository (restore target, source file).
    Io,
    /// Another operation holds the repository (a running garbage
    /// collection), or this writer lost its lease.
    Locked,
    /// A database server refused a request for what it contained (not for
    /// credentials, not for being unreachable).
    Rejected,
    /// A restored database differs from its snapshot.
    Mismatch,
    /// A replication source shows an older newest snapshot than one
    /// already accepted from it.
    RolledBack,
    /// A replication source has nothing newer than the allowed age.
    Stale,
    /// Cairn itself failed (a worker panicked): a bug, not the input.
    Bug,
}

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{detail}")]
    InvalidInput { detail: String },

    #[error("no Cairn repository at {url}: {detail}; create one with `cairn init --repo {url}`")]
    RepositoryNotFound { url: String, detail: String },

    #[error("{what} not found; {hint}")]
    NotFound { what: String, hint: String },

    #[error("{object} is missing{context}; run `cairn verify` to list the affected snapshots")]
    Missing { object: String, context: String },

    #[error(
        "{object} is corrupt: {detail}; run `cairn verify --read-data` to list the affected snapshots"
    )]
    Corrupt { object: String, detail: String },

    #[error("snapshot {snapshot}: signature check failed: {detail}; do not trust its contents")]
    BadSignature { snapshot: String, detail: String },

    #[error(
        "snapshot {snapshot} is signed by key {key}, which is not trusted here; \
         if that key is yours, pass it with --trust or add it when initialising the repository"
    )]
    UntrustedKey { snapshot: String, key: String },

    #[error("key file {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },

    #[error("source {item}: {detail}")]
    Source { item: String, detail: String },

    #[error(
        "no space left writing {object}: {detail}; free space or raise the quota, then run the command again (what is already stored is intact)"
    )]
    StorageFull { object: String, detail: String },

    #[error("{url}: access denied: {detail}; {}", access_hint(.url))]
    AccessDenied { url: String, detail: String },

    #[error(
        "{url}: unreachable while {doing}: {detail}; check the address and the network, then run the command again"
    )]
    Unreachable {
        url: String,
        doing: String,
        detail: String,
    },

    #[error("{what}; {hint}")]
    AlreadyExists { what: String, hint: String },

    #[error(
        "{url}: CouchDB refused the credentials ({detail}); give a server admin's name and \
         password in the URL (http://USER:PASSWORD@HOST:5984), in a --netrc file, or in \
         COUCHDB_USER and COUCHDB_PASSWORD"
    )]
    CouchAuth { url: String, detail: String },

    #[error("{url}: CouchDB forbids {doing} ({detail}); back up and restore as a server admin")]
    CouchForbidden {
        url: String,
        doing: String,
        detail: String,
    },

    #[error("{url}: the server rejected {what}: {detail}; {hint}")]
    Rejected {
        url: String,
        what: String,
        detail: String,
        hint: String,
    },

    #[error(
        "source {from} was rolled back: {detail}; snapshots were deleted or this is an old \
         or forged copy of it; find out why before trusting it (nothing was copied)"
    )]
    RolledBack { from: String, detail: String },

    #[error(
        "source {from} is stale: {detail}; check that its backups still run (nothing was copied)"
    )]
    Stale { from: String, detail: String },

    #[error(
        "internal error: {0}; this is a bug in cairn: please report it with the command that failed"
    )]
    Bug(String),

    #[error("{what} does not match the snapshot: {detail}; {hint}")]
    Mismatch {
        what: String,
        detail: String,
        hint: String,
    },

    #[error(
        "the signing key {key} is not one of this repository's trusted keys, so readers would \
         reject its snapshots; sign with a trusted key (`cairn key public FILE` shows a key file's \
         public key, `cairn init --trust` sets the trusted keys)"
    )]
    SigningKeyNotTrusted { key: String },

    #[error(
        "snapshot {snapshot} claims {time} but was stored at {seen} (the store's clock), more than \
         {} minutes before the time it claims: its signer's clock is wrong or its key is \
         compromised, so it is refused; inspect it, then remove it with `cairn forget {snapshot}`",
        crate::plan::retention::MAX_CLOCK_SKEW.as_mins()
    )]
    FromTheFuture {
        snapshot: String,
        time: String,
        seen: String,
    },

    #[error("{what}")]
    Unsupported { what: String },

    #[error("{what}; {hint}")]
    Locked { what: String, hint: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::RepositoryNotFound { .. } | Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Missing { .. } | Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::BadSignature { .. }
            | Error::UntrustedKey { .. }
            | Error::SigningKeyNotTrusted { .. }
            | Error::FromTheFuture { .. } => ErrorKind::BadSignature,
            Error::Key { .. } => ErrorKind::Key,
            Error::Source { .. } => ErrorKind::Source,
            Error::StorageFull { .. } => ErrorKind::StorageFull,
            Error::AccessDenied { .. } | Error::CouchAuth { .. } | Error::CouchForbidden { .. } => {
                ErrorKind::AccessDenied
            }
            Error::Rejected { .. } => ErrorKind::Rejected,
            Error::Mismatch { .. } => ErrorKind::Mismatch,
            Error::RolledBack { .. } => ErrorKind::RolledBack,
            Error::Stale { .. } => ErrorKind::Stale,
            Error::Bug(_) => ErrorKind::Bug,
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Locked { .. } => ErrorKind::Locked,
            Error::Io { source, .. } if is_storage_full(source) => ErrorKind::StorageFull,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// A corrupt-object error.
    pub fn corrupt(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            detail: detail.into(),
        }
    }

    /// A local I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The same error again (errors are not `Clone`: I/O errors are not).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Corrupt { object, detail } => Error::Corrupt {
                object: object.clone(),
                detail: detail.clone(),
            },
            Error::Missing { object, context } => Error::Missing {
                object: object.clone(),
                context: context.clone(),
            },
            Error::BadSignature { snapshot, detail } => Error::BadSignature {
                snapshot: snapshot.clone(),
                detail: detail.clone(),
            },
            Error::UntrustedKey { snapshot, key } => Error::UntrustedKey {
                snapshot: snapshot.clone(),
                key: key.clone(),
            },
            Error::FromTheFuture {
                snapshot,
                time,
                seen,
            } => Error::FromTheFuture {
                snapshot: snapshot.clone(),
                time: time.clone(),
                seen: seen.clone(),
            },
            Error::Unsupported { what } => Error::Unsupported { what: what.clone() },
            other => Error::Corrupt {
                object: "snapshot".into(),
                detail: other.to_string(),
            },
        }
    }

    /// An invalid-input error.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Error::InvalidInput {
            detail: detail.into(),
        }
    }
}

/// Whether an I/O error means "no space": ENOSPC or EDQUOT.
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// What to check when the store at `url` refuses access.
fn access_hint(url: &str) -> &'static str {
    if url.starts_with("s3://") {
        "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and their permissions"
    } else if url.starts_with("http://") || url.starts_with("https://") {
        "set CAIRN_TOKEN to a token of the server's token file whose role (read, append, \
         admin) allows this"
    } else if url.starts_with("ssh://") {
        "check the key (ssh-agent, ~/.ssh/config, CAIRN_SSH_COMMAND), the server's \
         known_hosts entry and the repository directory's permissions"
    } else {
        "check the repository directory's permissions"
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
