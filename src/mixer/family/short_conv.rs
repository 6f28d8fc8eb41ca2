//! Short causal depthwise convolution as a sequence mixer (H3, Hyena, Mamba, fla's
//! `ShortConvolution`; spec/mixers.md §2):
//!
//! ```text
//! y_t[c] = act(b[c] + Σ_{j=0}^{K−1} W[c, K−1−j] x_{t−j}[c]),   K = 2..4, act = identity or SiLU
//! ```
//!
//! The state is the last `K − 1` inputs, `[K − 1, C]` (zeros at a sequence's start). The kernel
//! is [`shift::causal_conv`]; RWKV's token shift is its `K = 2` case with tied taps
//! `W = [μ, 1 − μ]`.
//!
//! Paths: recurrent (one row at a time), parallel (the whole call against the carried rows) and
//! chunkwise (chunks with a `K − 1`-row halo carried in the state); all `O(K·C)` per token.

use crate::error::Result;
use crate::mixer::random::Rng;
use crate::mixer::{by_chunks, check_arg, MultiPath, Path, SequenceMixer};
use crate::ops::{shift, silu};
use ndarray::{Array1, Array2, ArrayView2};

/// A short causal depthwise convolution.
#[derive(Clone, Debug)]
pub struct ShortConv {
    /// Taps `[C, K]`; `W[:, K−1]` multiplies the current token.
    pub weight: Array2<f32>,
    /// Bias `[C]`, if any.
    pub bias: Option<Array1<f32>>,
    /// Apply SiLU to the output (Mamba, fla).
    pub silu: bool,
}

impl ShortConv {
    /// From taps `[C, K]`, an optional bias and the activation flag.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) if `K` is 0 or the bias is not `[C]`.
    pub fn new(weight: Array2<f32>, bias: Option<Array1<f32>>, silu: bool) -> Result<Self> {
        let (c, k) = weight.dim();
        check_arg(k > 0, "ShortConv", "taps", "[C, K] with K ≥ 1", &[c, k])?;
        if let Some(b) = &bias {
            check_arg(
                b.len() == c,
                "ShortConv",
                "bias",
                format!("[C] = [{c}]"),
                b.shape(),
            )?;
        }
        Ok(ShortConv { weight, bias, silu })
    }

    /// RWKV token shift `x_t + (x_{t−1} − x_t) ⊙ μ` as a kernel-2 convolution.
    pub fn token_shift(maa: Array1<f32>) -> Self {
        let c = maa.len();
        let weight =
            Array2::from_shape_fn((c, 2), |(i, j)| if j == 0 { maa[i] } else { 1.0 - maa[i] });
        ShortConv::new(weight, None, false).expect("two taps, no bias")
    }

    /// Random taps (`[C, K]`, uniform with variance `1/K`) and bias, SiLU, from `seed`.
    pub fn random(c: usize, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let b = (3.0 / k as f32).sqrt();
        let weight = rng.matrix(c, k, -b, b);
        let bias = rng.vector(c, -0.1, 0.1);
        ShortConv::new(weight, Some(bias), true).expect("a bias of the taps' width")
    }

    /// Kernel length `K`.
    pub fn kernel(&self) -> usize {
        self.weight.ncols()
    }

    fn call(&self, xs: ArrayView2<f32>, state: &mut Array2<f32>) -> Array2<f32> {
        let mut y = shift::causal_conv(
            xs,
            self.weight.view(),
            self.bias.as_ref().map(|b| b.view()),
            state,
        );
        if self.silu {
            silu(&mut y);
        }
        y
    }
}

impl SequenceMixer for ShortConv {
    /// The last `K − 1` inputs, oldest first, `[K − 1, C]`.
    type State = Array2<f32>;

    fn init_state(&self) -> Array2<f32> {
        Array2::zeros((self.kernel() - 1, self.weight.nrows()))
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut Array2<f32>) -> Array2<f32> {
        self.call(xs, state)
    }
}

impl MultiPath for ShortConv {
    fn forward_path(
        &self,
        xs: ArrayView2<f32>,
        state: &mut Array2<f32>,
        path: Path,
    ) -> Array2<f32> {
        let c = self.weight.nrows();
        match path {
            Path::Parallel => self.call(xs, state),
            Path::Recurrent => by_chunks(xs, state, 1, c, |x, s| self.call(x, s)),
            Path::Chunkwise(n) => by_chunks(xs, state, n, c, |x, s| self.call(x, s)),
        }
    }
}
