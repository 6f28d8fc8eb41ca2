//! Gated linear attention (Yang et al. 2024, "Gated Linear Attention Transformers with
//! Hardware-Efficient Training"; spec/mixers.md §7).
//!
//! Per head, with a data-dependent gate per key channel:
//!
//! ```text
//! λ_t = logsigmoid(x_t W_α1 W_α2 + b_α) / τ        (τ = 16; α_t = e^{λ_t} ∈ (0, 1))
//! S_t = diag(α_t) S_{t−1} + k_t v_tᵀ,   o_t = S_tᵀ q_t / √K
//! parallel:  P_{ts} = Σ_i q_{t,i} k_{s,i} e^{L_{t,i} − L_{s,i}} [s ≤ t],   O = P V / √K
//! y = W_o (swish(W_r x) ⊙ RMSNorm_h(o))
//! ```
//!
//! This is the [`outer_product`](crate::mixer::outer_product) kernel with `Gate::KeyToken(λ)` and the
//! inclusive read-out; the chunkwise path is its log-space template, where every exponent is a
//! sum of `λ ≤ 0`. State per head: `S: [K, V]`.

use crate::error::Result;
use crate::mixer::linear_attention::run;
use crate::mixer::outer_product::{Gate, Inputs, OuterState};
use crate::mixer::random::Rng;
use crate::mixer::{check_arg, check_dims, MultiPath, Path, SequenceMixer};
use crate::ops::{silu, HeadNorm, Linear, NormKind};
use ndarray::{Array1, Array2, ArrayView2};

/// The gate's temperature `τ` (GLA's `gate_logit_normalizer`).
pub const GATE_TEMPERATURE: f32 = 16.0;

/// A gated-linear-attention layer.
#[derive(Clone, Debug)]
pub struct Gla {
    /// Number of heads `H`.
    pub heads: usize,
    /// Query/key size per head `K`.
    pub key: usize,
    /// Value size per head `V`.
    pub value: usize,
    /// `W_q`, `[H·K, C]`.
    pub w_q: Linear,
    /// `W_k`, `[H·K, C]`.
    pub w_k: Linear,
    /// `W_v`, `[H·V, C]`.
    pub w_v: Linear,
    /// `W_r` (the output gate), `[H·V, C]`.
    pub w_r: Linear,
    /// `W_o`, `[C, H·V]`.
    pub w_o: Linear,
    /// The gate's low-rank projection `W_α1`, `[R, C]` (`R = 16` in the paper).
    pub w_alpha1: Linear,
    /// `W_α2`, `[H·K, R]`.
    pub w_alpha2: Linear,
    /// `b_α`, `[H·K]`.
    pub b_alpha: Array1<f32>,
    /// `τ`.
    pub temperature: f32,
    /// The per-head norm of the read-out.
    pub norm: HeadNorm,
}

impl Gla {
    /// A layer from its projections (`[out, in]`): `[W_q, W_k, W_v, W_r, W_o, W_α1, W_α2]`, the
    /// gate bias and the norm.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the first argument whose shape disagrees.
    pub fn new(
        heads: usize,
        key: usize,
        value: usize,
        [w_q, w_k, w_v, w_r, w_o, w_a1, w_a2]: [Array2<f32>; 7],
        b_alpha: Array1<f32>,
        norm: HeadNorm,
    ) -> Result<Self> {
        let c = w_q.ncols();
        let r = w_a1.nrows();
        check_dims(
            "Gla",
            &[
                ("W_q", w_q.dim(), (heads * key, c), "[H·K, C]"),
                ("W_k", w_k.dim(), (heads * key, c), "[H·K, C]"),
                ("W_v", w_v.dim(), (heads * value, c), "[H·V, C]"),
                ("W_r", w_r.dim(), (heads * value, c), "[H·V, C]"),
                ("W_o", w_o.dim(), (c, heads * value), "[C, H·V]"),
                ("W_α1", w_a1.dim(), (r, c), "[R, C]"),
                ("W_α2", w_a2.dim(), (heads * key, r), "[H·K, R]"),
            ],
        )?;
        let (hk, hv) = (heads * key, heads * value);
        check_arg(
            b_alpha.len() == hk,
            "Gla",
            "b_α",
            format!("[H·K] = [{hk}]"),
            b_alpha.shape(),
        )?;
        check_arg(
            norm.weight.len() == hv,
            "Gla",
            "norm weight",
            format!("[H·V] = [{hv}]"),
            norm.weight.shape(),
        )?;
        Ok(Gla {
            heads,
            key,
            value,
            w_q: Linear::from(w_q),
            w_k: Linear::from(w_k),
            w_v: Linear::from(w_v),
            w_r: Linear::from(w_r),
            w_o: Linear::from(w_o),
            w_alpha1: Linear::from(w_a1),
            w_alpha2: Linear::from(w_a2),
            b_alpha,
            temperature: GATE_TEMPERATURE,
            norm,
        })
    }

    /// Random projections of width `c` from `seed` (`V = 2K`, gate rank 16, gate bias in
    /// `[0, 4]` so that decays span slow to fast), affine-free RMSNorm (eps 1e-5).
    pub fn random(c: usize, heads: usize, key: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let value = 2 * key;
        let b = (3.0 / c as f32).sqrt();
        let b16 = (3.0f32 / 16.0).sqrt();
        let ws = [
            rng.matrix(heads * key, c, -b, b),
            rng.matrix(heads * key, c, -b, b),
            rng.matrix(heads * value, c, -b, b),
            rng.matrix(heads * value, c, -b, b),
            rng.matrix(c, heads * value, -b, b),
            rng.matrix(16, c, -b, b),
            rng.matrix(heads * key, 16, -b16, b16),
        ];
        let bias = rng.vector(heads * key, 0.0, 4.0);
        let norm = HeadNorm::plain(heads * value, heads, 1e-5, NormKind::Rms);
        Gla::new(heads, key, value, ws, bias, norm).expect("random layers have consistent shapes")
    }

    /// Width `C`.
    pub fn width(&self) -> usize {
        self.w_q.dim().1
    }

    /// The log-gates `λ = logsigmoid(x W_α1 W_α2 + b_α) / τ`, `[T, H·K]`, all `≤ 0`.
    pub fn log_gate(&self, xs: ArrayView2<f32>) -> Array2<f32> {
        let mut z = self.w_alpha2.forward(self.w_alpha1.forward(xs).view());
        z += &self.b_alpha;
        let tau = self.temperature;
        // logsigmoid(z) = −softplus(−z) = min(z, 0) − ln(1 + e^{−|z|}).
        z.mapv_inplace(|z| (z.min(0.0) - (-z.abs()).exp().ln_1p()) / tau);
        z
    }

    /// Raw read-out `o` (before the norm and gate) on `path`.
    ///
    /// # Shapes
    /// `xs: [T, C]` → `[T, H·V]`.
    pub fn attend(&self, xs: ArrayView2<f32>, state: &mut OuterState, path: Path) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.width(), "Gla: width");
        let mut q = self.w_q.forward(xs);
        q *= (self.key as f32).powf(-0.5);
        let k = self.w_k.forward(xs);
        let v = self.w_v.forward(xs);
        let lam = self.log_gate(xs);
        let x = Inputs {
            gate: Gate::KeyToken(lam.view()),
            ..Inputs::new(q.view(), k.view(), v.view())
        };
        run(&x, state, path)
    }
}

impl SequenceMixer for Gla {
    type State = OuterState;

    fn init_state(&self) -> OuterState {
        OuterState::new(self.heads, self.key, self.value, false)
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut OuterState) -> Array2<f32> {
        let path = if xs.nrows() <= 1 {
            Path::Recurrent
        } else {
            Path::Chunkwise(16)
        };
        self.forward_path(xs, state, path)
    }
}

impl MultiPath for Gla {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut OuterState, path: Path) -> Array2<f32> {
        let mut o = self.attend(xs, state, path);
        self.norm.forward_inplace(&mut o);
        let mut g = self.w_r.forward(xs);
        silu(&mut g);
        o *= &g;
        self.w_o.forward(o.view())
    }
}
