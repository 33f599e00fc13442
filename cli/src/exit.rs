//! Exit codes: one per kind of failure, so scripts and monitoring can tell
//! "the backup source failed" from "the disk is full" from "data is damaged".
//! The table is in the README; keep them in step.

use std::process::ExitCode;

use cairn_store::{Error, ErrorKind};

/// Success; for `verify`, the repository is clean.
pub const OK: u8 = 0;
/// A bug in cairn.
pub const INTERNAL: u8 = 1;
/// Bad arguments or input (clap also uses 2).
pub const USAGE: u8 = 2;
/// Data in the repository is damaged or missing.
pub const DAMAGE: u8 = 3;
/// The storage could not be reached or failed.
pub const UNREACHABLE: u8 = 4;
/// No repository, snapshot or item by that name.
pub const NOT_FOUND: u8 = 5;
/// A snapshot's signature is bad or its signer untrusted.
pub const BAD_SIGNATURE: u8 = 6;
/// A key file is missing, unreadable or malformed.
pub const KEY: u8 = 7;
/// The backup source failed (command exited non-zero, unreadable file).
pub const SOURCE: u8 = 8;
/// No space left in the repository (or the restore target).
pub const STORAGE_FULL: u8 = 9;
/// The storage refused the credentials.
pub const ACCESS_DENIED: u8 = 10;
/// Something that must be new exists (repository, non-empty target).
pub const ALREADY_EXISTS: u8 = 11;
/// The storage or repository needs a feature this cairn lacks.
pub const UNSUPPORTED: u8 = 12;
/// Local I/O failed (restore target, source file).
pub const IO: u8 = 13;
/// Another operation holds the repository (a garbage collection is running),
/// or this writer lost its lease.
pub const LOCKED: u8 = 14;
/// A database server rejected what was sent (a document, a setting).
pub const REJECTED: u8 = 15;
/// A restored database differs from its snapshot.
pub const MISMATCH: u8 = 16;
/// A replication source was rolled back behind what a replica accepted.
pub const ROLLED_BACK: u8 = 17;
/// A replication source has nothing newer than `--max-age`.
pub const STALE: u8 = 18;
/// `cairn run`: some steps failed (each is named on stderr and in the
/// report); the others ran.
pub const PARTIAL: u8 = 19;
/// The output pipe closed before everything was written.
pub const BROKEN_PIPE: u8 = 141;

/// The exit code for a store error kind.
pub fn code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput => USAGE,
        ErrorKind::Corrupt => DAMAGE,
        ErrorKind::Unreachable => UNREACHABLE,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::BadSignature => BAD_SIGNATURE,
        ErrorKind::Key => KEY,
        ErrorKind::Source => SOURCE,
        ErrorKind::StorageFull => STORAGE_FULL,
        ErrorKind::AccessDenied => ACCESS_DENIED,
        ErrorKind::AlreadyExists => ALREADY_EXISTS,
        ErrorKind::Unsupported => UNSUPPORTED,
        ErrorKind::Io => IO,
        ErrorKind::Locked => LOCKED,
        ErrorKind::Rejected => REJECTED,
        ErrorKind::Mismatch => MISMATCH,
        ErrorKind::RolledBack => ROLLED_BACK,
        ErrorKind::Stale => STALE,
        ErrorKind::Bug => INTERNAL,
    }
}

/// The store error behind an error, if any.
pub fn store_error(e: &anyhow::Error) -> Option<&Error> {
    e.chain().find_map(|c| c.downcast_ref::<Error>())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints an error (unless it is a closed pipe) and returns its exit code.
pub fn report(e: anyhow::Error) -> ExitCode {
    if is_broken_pipe(&e) {
        return ExitCode::from(BROKEN_PIPE);
    }
    let code = store_error(&e).map_or(INTERNAL, |s| code_for(s.kind()));
    let mut message = format!("cairn: error: {e}");
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !message.contains(&c) {
            message.push_str(&format!(": {c}"));
        }
    }
    eprintln!("{}", crate::terminal::safe_text(&message));
    ExitCode::from(code)
}
