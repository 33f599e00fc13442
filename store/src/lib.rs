//! Cairn's store: on-disk formats, the repository, and the operations on it.
//!
//! The layers, each importing only from the ones above it in this list:
//!
//! - [`error`], [`id`]: the vocabulary.
//! - [`format`](mod@format): the bytes of every object, pure functions (no I/O):
//!   chunking, frames, packs, index objects, chunk lists, directory
//!   trees, signed manifests, keys, the config.
//! - [`plan`]: pure decisions over what is stored: which snapshots a
//!   command means, which a retention policy keeps, what garbage
//!   collection may delete.
//! - [`cpu`]: CPU work handed from async code to rayon's pool.
//! - [`backend`] (the one seam to storage), [`repo`] (a typed repository:
//!   config read, index loaded), [`blob_reader`], [`lease`], [`pause`].
//! - [`ops`]: operations (backup, restore, verify, forget, gc, replicate,
//!   diff), each `…Options` in, `…Summary` or report out.
//! - [`serve`]: the HTTP server of a repository.
//!
//! CouchDB is not here: the `cairn-couch` crate builds it on the public
//! seams of these layers (a [`Source::Prepared`](ops::source::Source::Prepared)
//! of entries to back up, [`restore_item`](repo::IndexedRepository::restore_item)
//! and [`with_items`](ops::walk::with_items) to read items back, and a
//! [`ContentCheck`](ops::verify::ContentCheck) for verify).

pub mod backend;
pub mod blob_reader;
pub mod cpu;
pub mod error;
pub mod format;
pub mod id;
pub mod lease;
pub mod ops;
pub mod pause;
pub mod plan;
pub mod redact;
pub mod repo;
pub mod serve;

pub use error::{Error, ErrorKind, Result};
