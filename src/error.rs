//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong when a caller hands the crate a file, a shape, a token id or a
/// state. Each variant names the offending thing (tensor path, expected and found shape, id and
/// vocabulary size) so the message alone says what to fix.
///
/// `Debug` prints the same sentence as `Display`, so that a `main` returning
/// [`Result`] ends with `Error: cannot access …` rather than a struct dump; match
/// on the variants to tell errors apart in code.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("cannot access `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed safetensors file (bad header, truncated data, ...).
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// A checkpoint file in a container other than safetensors (a PyTorch `.pth`, a GGUF file, a
    /// Hugging Face folder) is malformed or uses something the crate does not read.
    #[error("not a valid {format} checkpoint `{file}`: {what}")]
    Checkpoint {
        /// The container: `PyTorch .pth`, `GGUF`, `Hugging Face`.
        format: &'static str,
        /// The file or folder.
        file: String,
        /// What is wrong, naming the tensor, record or opcode.
        what: String,
    },
    /// A tensor the checkpoint must contain is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected}")]
    Shape {
        /// Full tensor name.
        name: String,
        /// The expected shape, written out (e.g. `[64, 64]` or `[H, N] with H*N = 64`).
        expected: String,
        /// The shape found in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a type the crate does not read.
    #[error("tensor `{name}` is stored as {dtype}; supported types are F32, F16 and BF16")]
    Dtype {
        /// Full tensor name.
        name: String,
        /// The stored type.
        dtype: String,
    },
    /// A block-quantized tensor cannot be used: its format is unknown or not implemented, its
    /// bytes are not its shape's blocks, or a block is bad (e.g. a NaN scale).
    #[error("tensor `{name}`: {what}")]
    Blocks {
        /// Full tensor name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The tensor names do not match any RWKV version the crate knows.
    #[error("unrecognised checkpoint: {0}")]
    UnknownVersion(String),
    /// A token id is not smaller than the vocabulary size.
    #[error("token id {token} is out of range for a vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// A prompt with no tokens was given where at least one is needed.
    #[error("empty prompt: at least one token is required")]
    EmptyPrompt,
    /// A state does not belong to this model (other version, sizes, or a malformed state file).
    #[error("state does not fit this model: {0}")]
    StateMismatch(String),
    /// An input array has the wrong shape.
    #[error("{what} has shape {found:?}, expected {expected}")]
    InputShape {
        /// What the input is.
        what: String,
        /// The expected shape.
        expected: String,
        /// The shape given.
        found: Vec<usize>,
    },
    /// A tokenizer vocabulary file is malformed; the message names the line (1-based) and what
    /// is wrong with it.
    #[error("malformed vocabulary: {0}")]
    Vocab(String),
    /// Sampling is impossible or a sampler setting is invalid (NaN or infinite logits, every
    /// token banned, a temperature below zero, ...).
    #[error("cannot sample: {0}")]
    Sample(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
