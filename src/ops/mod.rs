//! Stateless math: linear layers, normalisations, activations and token shift, element-wise
//! passes that split large arrays across rayon's threads, and (internal) the team that shares
//! one token's matrix products between threads.
//!
//! Nothing here knows about checkpoints, versions or sequence state.

mod activation;
pub(crate) mod aligned;
mod elementwise;
pub(crate) mod gemm;
pub(crate) mod kernels;
mod linear;
mod matrix;
mod norm;
pub mod shift;
mod simd;
pub(crate) mod team;

/// Below this many multiply-adds a product or loop runs on the calling thread.
pub(crate) const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Runs four independent computations as rayon tasks and returns their results in order (a
/// layer's projections: one's element-wise work overlaps the others' matrix blocks).
pub(crate) fn join4<A: Send, B: Send, C: Send, D: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
    c: impl FnOnce() -> C + Send,
    d: impl FnOnce() -> D + Send,
) -> (A, B, C, D) {
    let ((a, b), (c, d)) = rayon::join(|| rayon::join(a, b), || rayon::join(c, d));
    (a, b, c, d)
}

pub use activation::{relu_squared, sigmoid, silu};
pub(crate) use elementwise::{for_each_row, for_each_row_with, map_inplace, zip_inplace};
pub(crate) use kernels::wkv_step;
pub use linear::Linear;
pub use matrix::{Matrix, Prepared};
pub use norm::{HeadNorm, LayerNorm, NormKind};
pub use simd::{Cpu, Element};
pub(crate) use team::{with_team, Team, TeamBuffers};
