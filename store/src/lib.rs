//! Cairn's store: on-disk formats, the repository, and the operations on it.
//!
//! Pure modules (no I/O): [`chunker`], [`frame`], [`pack`], [`index`],
//! [`tree`], [`manifest`], [`key`], [`config`]. Everything that touches
//! storage goes through [`backend`].

pub mod backend;
pub mod blob_reader;
pub mod chunker;
pub mod config;
pub mod couch;
mod cpu;
pub mod cutter;
pub mod dir;
pub mod error;
pub mod frame;
pub mod gc;
pub mod id;
pub mod index;
pub mod key;
pub mod lease;
pub mod manifest;
pub mod ops;
pub mod pack;
pub mod pause;
pub mod redact;
pub mod repo;
pub mod retention;
pub mod serve;
pub mod session;
pub mod tree;
mod wire;

pub use error::{Error, ErrorKind, Result};
