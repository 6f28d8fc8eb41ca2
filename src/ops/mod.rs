//! Stateless math: linear layers, normalisations, activations and token shift, and the team
//! that shares one token's matrix products between threads ([`team`]).
//!
//! Nothing here knows about checkpoints, versions or sequence state.

mod activation;
pub mod kernels;
mod linear;
mod norm;
pub mod shift;
pub mod team;

pub use activation::{relu_squared, sigmoid, silu};
pub use linear::Linear;
pub use norm::{GroupNorm, HeadNorm, LayerNorm, NormKind};
pub use team::{with_team, Team, TeamBuffers};
