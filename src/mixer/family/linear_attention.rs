//! Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs") and Performer's
//! FAVOR+ positive random features (Choromanski et al. 2021) as its second feature map
//! (spec/mixers.md §3, §4).
//!
//! Per head, with a feature map `φ` applied to the projected queries and keys:
//!
//! ```text
//! S_t = S_{t−1} + φ(k_t) v_tᵀ,   z_t = z_{t−1} + φ(k_t)
//! o_t = S_tᵀ φ(q_t) / (φ(q_t)ᵀ z_t + ε)
//! parallel:  O = (A V) ⊘ (A 1 + ε),   A = (φ(Q) φ(K)ᵀ) ⊙ M   (M the causal mask)
//! out = W_o [o^1 … o^H]
//! ```
//!
//! This is the [`outer_product`] kernel with no gate, the inclusive read-out and the normaliser
//! state `z`; all three paths come from it. The state per head is `S: [d_φ, V]` and `z: [d_φ]`
//! (`d_φ = K` for elu+1, `m` random features for FAVOR+).
//!
//! # Feature maps
//!
//! - [`FeatureMap::EluPlusOne`]: `φ(x) = elu(x) + 1 > 0`, `ε = 1e-6` (fast-transformers).
//! - [`FeatureMap::Favor`]: `φ⁺(x) = m^{−1/2} exp(Ω x̃ − ‖x̃‖²/2)`, `x̃ = x / K^{1/4}`, so that
//!   `E[φ⁺(q)ᵀφ⁺(k)] = exp(qᵀk / √K)` (softmax attention in expectation). `Ω ∈ R^{m×K}` is a
//!   frozen parameter (orthogonal random features from a seed, [`Favor::orthogonal`]).
//!   Stabilisers, both causal and streamable: each query's exponent is shifted by its own
//!   maximum `max_i (Ω q̃)_i − ‖q̃‖²/2`, and every key's by the constant `c = max_i ‖ω_i‖²/2`
//!   (`ωᵀk̃ − ‖k̃‖²/2 ≤ ‖ω‖²/2` for every `k̃`, so no key feature exceeds `m^{−1/2}`). Both shifts
//!   cancel between numerator and denominator; only `ε` (here `1e-30`, so that it never
//!   competes with the tiny denominators that the key shift produces) sees them.

use crate::error::Result;
use crate::mixer::outer_product::{self, Inputs, OuterState};
use crate::mixer::random::Rng;
use crate::mixer::{check_dims, MultiPath, Path, SequenceMixer};
use crate::ops::Linear;
use ndarray::{s, Array2, ArrayView2, Zip};

/// The normaliser's `ε` for elu+1 features (fast-transformers' value).
pub const ELU_EPS: f32 = 1e-6;
/// The normaliser's `ε` for FAVOR+ features (see the module docs).
pub const FAVOR_EPS: f32 = 1e-30;

/// FAVOR+ positive random features.
#[derive(Clone, Debug)]
pub struct Favor {
    /// The random projection `Ω`, `[m, K]` (rows `ω_i`), shared by all heads.
    pub omega: Array2<f32>,
    /// The key shift `c = max_i ‖ω_i‖²/2`.
    pub key_shift: f32,
}

impl Favor {
    /// Features with the given projection `Ω: [m, K]`.
    pub fn new(omega: Array2<f32>) -> Self {
        let key_shift = omega
            .rows()
            .into_iter()
            .map(|r| 0.5 * r.dot(&r))
            .fold(0.0, f32::max);
        Favor { omega, key_shift }
    }

    /// `m` orthogonal random features for head size `key` from `seed`: blocks of `key`
    /// orthonormal rows (Gram–Schmidt of Gaussian matrices, in f64), each row rescaled to the
    /// norm of an independent `N(0, I)` vector (performer-pytorch's `scaling = 0`).
    pub fn orthogonal(m: usize, key: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut rows: Vec<Vec<f64>> = Vec::with_capacity(m);
        while rows.len() < m {
            let mut block: Vec<Vec<f64>> = Vec::with_capacity(key);
            while block.len() < key {
                let mut v: Vec<f64> = (0..key).map(|_| rng.normal()).collect();
                for b in &block {
                    let d: f64 = v.iter().zip(b).map(|(a, b)| a * b).sum();
                    v.iter_mut().zip(b).for_each(|(a, b)| *a -= d * b);
                }
                let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                if n > 1e-6 {
                    block.push(v.into_iter().map(|a| a / n).collect());
                }
            }
            for b in block.into_iter().take(m - rows.len()) {
                let norm = (0..key).map(|_| rng.normal().powi(2)).sum::<f64>().sqrt();
                rows.push(b.into_iter().map(|a| a * norm).collect());
            }
        }
        let omega = Array2::from_shape_fn((m, key), |(i, j)| rows[i][j] as f32);
        Favor::new(omega)
    }

    /// Number of features `m`.
    pub fn features(&self) -> usize {
        self.omega.nrows()
    }

    /// `φ⁺` of every head of every row, with the query or the key shift.
    ///
    /// # Shapes
    /// `xs: [T, H·K]` → `[T, H·m]`.
    ///
    /// # Panics
    /// If the width is not a multiple of `K`.
    #[track_caller]
    pub fn apply(&self, xs: ArrayView2<f32>, is_query: bool) -> Array2<f32> {
        let (m, kd) = self.omega.dim();
        assert_eq!(xs.ncols() % kd, 0, "Favor::apply: width must be H·K");
        let h = xs.ncols() / kd;
        let scale = (kd as f32).powf(-0.25);
        let norm = (m as f32).powf(-0.5);
        let mut out = Array2::zeros((xs.nrows(), h * m));
        for head in 0..h {
            let x = xs
                .slice(s![.., head * kd..(head + 1) * kd])
                .mapv(|v| v * scale);
            let proj = x.dot(&self.omega.t()); // [T, m]
            let mut o = out.slice_mut(s![.., head * m..(head + 1) * m]);
            Zip::from(o.rows_mut())
                .and(proj.rows())
                .and(x.rows())
                .for_each(|mut o, p, x| {
                    let half_sq = 0.5 * x.dot(&x);
                    let shift = if is_query {
                        p.fold(f32::NEG_INFINITY, |a, &b| a.max(b)) - half_sq
                    } else {
                        self.key_shift
                    };
                    Zip::from(&mut o)
                        .and(&p)
                        .for_each(|o, &p| *o = norm * (p - half_sq - shift).exp());
                });
        }
        out
    }
}

/// The feature map `φ`.
#[derive(Clone, Debug)]
pub enum FeatureMap {
    /// `elu(x) + 1`.
    EluPlusOne,
    /// FAVOR+ positive random features.
    Favor(Favor),
}

impl FeatureMap {
    /// `φ` of every head of every row (`is_query` selects FAVOR+'s stabiliser).
    ///
    /// # Shapes
    /// `xs: [T, H·K]` → `[T, H·d_φ]`.
    pub fn apply(&self, xs: ArrayView2<f32>, is_query: bool) -> Array2<f32> {
        match self {
            FeatureMap::EluPlusOne => xs.mapv(|x| if x > 0.0 { x + 1.0 } else { x.exp() }),
            FeatureMap::Favor(f) => f.apply(xs, is_query),
        }
    }

    /// `d_φ` for head size `key`.
    pub fn dim(&self, key: usize) -> usize {
        match self {
            FeatureMap::EluPlusOne => key,
            FeatureMap::Favor(f) => f.features(),
        }
    }
}

/// A causal linear-attention layer: projections, feature map, normalised kernel, output.
#[derive(Clone, Debug)]
pub struct LinearAttention {
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
    /// `W_o`, `[C, H·V]`.
    pub w_o: Linear,
    /// `φ`.
    pub feature: FeatureMap,
    /// The normaliser's `ε` ([`ELU_EPS`], [`FAVOR_EPS`]).
    pub eps: f32,
}

impl LinearAttention {
    /// A layer from its projections (`[out, in]`) and feature map.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the argument if the projections' shapes disagree with
    /// `heads`, `key`, `value` or each other, or a FAVOR+ projection is not `[m, key]`.
    pub fn new(
        heads: usize,
        key: usize,
        value: usize,
        [w_q, w_k, w_v, w_o]: [Array2<f32>; 4],
        feature: FeatureMap,
    ) -> Result<Self> {
        let c = w_q.ncols();
        check_dims(
            "LinearAttention",
            &[
                ("W_q", w_q.dim(), (heads * key, c), "[H·K, C]"),
                ("W_k", w_k.dim(), (heads * key, c), "[H·K, C]"),
                ("W_v", w_v.dim(), (heads * value, c), "[H·V, C]"),
                ("W_o", w_o.dim(), (c, heads * value), "[C, H·V]"),
            ],
        )?;
        let eps = match &feature {
            FeatureMap::EluPlusOne => ELU_EPS,
            FeatureMap::Favor(f) => {
                let (m, k) = f.omega.dim();
                check_dims("LinearAttention", &[("Ω", (m, k), (m, key), "[m, K]")])?;
                FAVOR_EPS
            }
        };
        Ok(LinearAttention {
            heads,
            key,
            value,
            w_q: Linear::from(w_q),
            w_k: Linear::from(w_k),
            w_v: Linear::from(w_v),
            w_o: Linear::from(w_o),
            feature,
            eps,
        })
    }

    /// Random projections of width `c` from `seed`; `favor = Some(m)` selects `m` FAVOR+
    /// features (drawn from the same seed), `None` elu+1.
    pub fn random(c: usize, heads: usize, key: usize, favor: Option<usize>, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let b = (3.0 / c as f32).sqrt();
        let mut m = |o, i| rng.matrix(o, i, -b, b);
        let ws = [
            m(heads * key, c),
            m(heads * key, c),
            m(heads * key, c),
            m(c, heads * key),
        ];
        let feature = match favor {
            Some(m) => FeatureMap::Favor(Favor::orthogonal(m, key, seed.wrapping_add(1))),
            None => FeatureMap::EluPlusOne,
        };
        LinearAttention::new(heads, key, key, ws, feature)
            .expect("random layers have consistent shapes")
    }

    /// Width `C`.
    pub fn width(&self) -> usize {
        self.w_q.dim().1
    }

    /// The kernel's inputs `(φ(q), φ(k), v)`, `[T, H·d_φ]`, `[T, H·d_φ]`, `[T, H·V]`.
    pub fn features(&self, xs: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        let q = self.feature.apply(self.w_q.forward(xs).view(), true);
        let k = self.feature.apply(self.w_k.forward(xs).view(), false);
        (q, k, self.w_v.forward(xs))
    }
}

impl SequenceMixer for LinearAttention {
    type State = OuterState;

    fn init_state(&self) -> OuterState {
        OuterState::new(self.heads, self.feature.dim(self.key), self.value, true)
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut OuterState) -> Array2<f32> {
        let path = if xs.nrows() <= 1 {
            Path::Recurrent
        } else {
            Path::Chunkwise(64)
        };
        self.forward_path(xs, state, path)
    }
}

impl MultiPath for LinearAttention {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut OuterState, path: Path) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.width(), "LinearAttention: width");
        let (q, k, v) = self.features(xs);
        let x = Inputs {
            eps: self.eps,
            ..Inputs::new(q.view(), k.view(), v.view())
        };
        let o = run(&x, state, path);
        self.w_o.forward(o.view())
    }
}

/// Runs the [`outer_product`] kernel on `path`.
pub(crate) fn run(x: &Inputs, state: &mut OuterState, path: Path) -> Array2<f32> {
    match path {
        Path::Recurrent => outer_product::recurrent(x, state),
        Path::Parallel => outer_product::parallel(x, state),
        Path::Chunkwise(c) => outer_product::chunkwise(x, state, c),
    }
}
