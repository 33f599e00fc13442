//! Pure decisions over what is stored: which snapshot a command means
//! ([`select`]), which a retention policy keeps ([`retention`]), what
//! garbage collection may delete and when ([`gc`]). No I/O: the operations
//! in [`crate::ops`] load what these need and carry out what they decide.

pub mod gc;
pub mod retention;
pub mod select;
