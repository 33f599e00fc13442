//! Cairn's store: on-disk formats, the repository, and the operations on it.
//!
//! Pure modules (no I/O): [`chunker`], [`frame`], [`pack`], [`index`],
//! [`tree`], [`manifest`], [`key`], [`config`]. Everything that touches
//! storage goes through [`backend`].

pub mod chunker;
pub mod config;
pub mod error;
pub mod frame;
pub mod id;
pub mod index;
pub mod key;
pub mod manifest;
pub mod pack;
pub mod tree;
mod wire;

pub use error::{Error, ErrorKind, Result};
