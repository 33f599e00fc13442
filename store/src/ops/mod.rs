//! Operations on a repository: each takes `…Options`, returns a `…Summary`
//! or report, and does its I/O through the repository's backend.

pub mod backup;
mod copies;
pub mod diff;
pub mod forget;
pub(crate) mod fsmeta;
mod gather;
pub mod gc;
mod mark;
mod packer;
pub mod replicate;
pub mod restore;
pub mod session;
pub mod source;
pub mod stats;
mod target;
pub mod verify;
pub mod walk;

pub use crate::lease::hostname;
