//! `tokenshift`: RWKV recurrent language models on CPU, as ndarray operations.
//!
//! The crate runs RWKV checkpoints (versions 4, 5.0, 5.1, 5.2, 6 and 7; BlinkDL `.pth` and
//! safetensors files, Hugging Face folders, llama.cpp GGUF files, with f32, f16 or bf16
//! tensors, memory-mapped: see [`weights::Checkpoint`]) token by token or a whole prompt at
//! once, and exposes every layer on its own.
//!
//! Each sequence mixer has two paths that give the same result (tests pin them together):
//!
//! - **recurrent** ([`SequenceMixer::step`]): one token, O(1) work and a fixed-size state;
//! - **sequence** ([`SequenceMixer::forward`]): `T` tokens at once, projections as matrix
//!   products over all rows, leaving the state as `T` steps would.
//!
//! For RWKV-5/6 the state of a head is a matrix `S ∈ R^{N×N}` and each token does
//!
//! ```text
//! y_t = r_tᵀ (diag(u) k_t v_tᵀ + S_{t−1}),     S_t = diag(w_t) S_{t−1} + k_t v_tᵀ
//! ```
//!
//! and for RWKV-7 (state indexed `[value, key]`, `κ̂` the normalised key, `a` the in-context
//! learning rate; see [`mixer::wkv7`], which also has a chunkwise form of the same recurrence)
//!
//! ```text
//! S_t = S_{t−1} diag(w_t) − (S_{t−1} κ̂_t)(κ̂_t ⊙ a_t)ᵀ + v_t k_tᵀ,     y_t = S_t r_t
//! ```
//!
//! # Example
//!
//! ```
//! use tokenshift::{Logits, Model, SHIPPED_MODEL};
//!
//! # fn main() -> tokenshift::Result<()> {
//! let model = Model::load(SHIPPED_MODEL)?;
//! let mut state = model.init_state();
//! // A whole prompt at once, then one token at a time from the same state.
//! let logits = model.forward(&[3, 14, 15], &mut state, Logits::Last)?;
//! let next = logits.row(0).iter().enumerate()
//!     .max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap();
//! let fork = state.clone(); // snapshot: the model itself is never mutated
//! let logits = model.step(next, &mut state)?;
//! assert_eq!(logits.len(), model.config().vocab);
//! # let _ = fork;
//! # Ok(())
//! # }
//! ```

pub mod block;
pub mod channel_mix;
pub mod config;
pub mod error;
pub mod generate;
pub mod mixer;
pub mod model;
pub mod ops;
pub mod sample;
mod save;
pub mod state;
pub mod storage;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

/// The path of the model shipped with the crate's source: a 7 MB byte-level RWKV-6 (6 layers
/// of 192, vocabulary 257: [`ByteTokenizer`] ids) trained on the King James Bible, stored in
/// f16. The path is where the crate's source was built from (the repository, or cargo's
/// registry cache for a dependency), so it serves examples, tests and first steps on the
/// machine that built the program, not a program copied elsewhere.
pub const SHIPPED_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/models/kjv-rwkv6.safetensors"
);

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use config::{Config, Version};
pub use error::{Error, Result};
pub use generate::{Session, StopReason, Text, TextStream, Tokens};
pub use mixer::SequenceMixer;
pub use model::{Executor, Logits, Model};
pub use sample::{Sampler, SamplerConfig};
pub use save::{write_atomic, write_atomic_with, SafeTensorsStream, StreamEntry};
pub use state::State;
pub use tokenizer::{ByteTokenizer, Tokenizer, Utf8Stream, WorldTokenizer};
pub use weights::DType;
