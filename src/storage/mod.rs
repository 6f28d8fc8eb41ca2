//! Where weight values live: bytes shared with a file's memory map or held in memory.

mod bytes;

pub use bytes::{Plain, SharedBytes};
