//! Where weight values live: bytes shared with a file's memory map or held in memory, and the
//! storages of weight matrices behind [`Matrix`](crate::ops::Matrix).

mod bytes;
mod dense;
pub mod quant;

pub use bytes::{Plain, SharedBytes};
pub use dense::Dense;
pub use quant::{BlockFormat, Quantized};
