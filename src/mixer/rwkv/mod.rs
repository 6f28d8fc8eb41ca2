//! The RWKV time mixes, versions 4 to 7, each built from a checkpoint's tensors or from arrays
//! (a parameter struct per version and a checked `new`).

pub(crate) mod from_arrays;
pub mod rwkv4;
pub mod rwkv5;
pub mod rwkv6;
pub mod rwkv7;
