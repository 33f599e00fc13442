//! The bytes of every object Cairn stores: pure functions, no I/O.
//! `format-spec/README.md` is the normative description.

pub mod chunker;
pub mod config;
pub mod cutter;
pub mod dir;
pub mod frame;
pub mod index;
pub mod key;
pub mod manifest;
pub mod pack;
pub mod tree;
pub(crate) mod wire;
