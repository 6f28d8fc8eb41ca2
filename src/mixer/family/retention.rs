//! RetNet multi-scale retention (Sun et al. 2023), with xPos expressed as a decay in the state
//! (spec/mixers.md §6).
//!
//! Per head `h` with decay `γ_h = 1 − 2^{−5−h}` and absolute positions `n = 0, 1, …`:
//!
//! ```text
//! q̂_n = R(nθ) q_n,   k̂_n = R(nθ) k_n / √K         (pairs (2i, 2i+1) rotated by n·θ_i,
//!                                                   θ_i = 10000^{−i/(K/2−1)})
//! S_n = γ_h S_{n−1} + k̂_n v_nᵀ,   o_n = S_nᵀ q̂_n   (recurrent)
//! O = (Q̂ K̂ᵀ ⊙ D) V,   D_{nm} = γ^{n−m} [n ≥ m]     (parallel)
//! Y = W_o (swish(W_g x) ⊙ Norm_h(O))               (Norm per head: GroupNorm or RMSNorm)
//! ```
//!
//! xPos (Sun et al. 2022) scales `q̂_n` by `ζ^{n/B}` and `k̂_m` by `ζ^{−m/B}` per pair `i`
//! (`ζ_i = (i/(K/2) + 0.4)/1.4`, `B = 512`); each factor alone grows without bound. Their
//! product `ζ_i^{(n−m)/B}` is instead folded into the state as a constant decay per key
//! channel: `S_n = diag(γ_h ζ^{1/B}) S_{n−1} + k̂_n v_nᵀ`, so the recurrence stays `O(1)` and
//! every exponent stays `≤ 0`.
//!
//! Retention is the [`outer_product`](crate::mixer::outer_product) kernel with the per-head gate
//! `ln γ_h` (`Gate::Head`), or the per-key gate `ln γ_h + ln ζ_i / B` with xPos (`Gate::Key`),
//! and the inclusive read-out. The paper's score normalisations (`D̃`, the `|ΣR|` clamp) only
//! rescale each row of `O`, which the per-head norm removes up to its `ε`; they are left out, so
//! that all three paths agree exactly.
//!
//! State per head: `S: [K, V]`, plus the position `n` (for the rotation).

use crate::error::{Error, Result};
use crate::mixer::linear_attention::run;
use crate::mixer::outer_product::{Gate, Inputs, OuterState};
use crate::mixer::random::Rng;
use crate::mixer::{check_arg, check_dims, MultiPath, Path, SequenceMixer};
use crate::ops::{silu, HeadNorm, Linear, NormKind};
use ndarray::{Array1, Array2, ArrayView2};

/// xPos' scale base `B`.
pub const XPOS_SCALE_BASE: f64 = 512.0;

/// State of a retention layer.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionState {
    /// `S` per head, `[H, K, V]`.
    pub kernel: OuterState,
    /// Tokens seen so far: the position of the next token.
    pub position: u64,
}

/// A multi-scale retention layer.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Number of heads `H`.
    pub heads: usize,
    /// Query/key size per head `K` (even).
    pub key: usize,
    /// Value size per head `V`.
    pub value: usize,
    /// `W_q`, `[H·K, C]`.
    pub w_q: Linear,
    /// `W_k`, `[H·K, C]`.
    pub w_k: Linear,
    /// `W_v`, `[H·V, C]`.
    pub w_v: Linear,
    /// `W_g` (the swish gate), `[H·V, C]`.
    pub w_g: Linear,
    /// `W_o`, `[C, H·V]`.
    pub w_o: Linear,
    /// The log-decay of each head `ln γ_h`, `[H]`.
    pub log_gamma: Array1<f32>,
    /// The per-key log-gate actually used: `ln γ_h` (+ `ln ζ_i / B` with xPos), `[H·K]`.
    pub log_gate: Array1<f32>,
    /// Whether xPos' decay is folded in.
    pub xpos: bool,
    /// The rotation frequencies `θ_i`, `[K/2]` (f64: angles `n·θ` are formed in f64).
    pub theta: Vec<f64>,
    /// The per-head norm of the read-out.
    pub norm: HeadNorm,
}

/// `γ_h = 1 − 2^{−5−h}` for `h = 0..H` (torchscale and fla), as `ln γ_h`.
pub fn log_gammas(heads: usize) -> Array1<f32> {
    Array1::from_shape_fn(heads, |h| (1.0 - 2f64.powi(-5 - h as i32)).ln() as f32)
}

impl Retention {
    /// A layer from its projections (`[out, in]`): `[W_q, W_k, W_v, W_g, W_o]`, the per-head
    /// log-decays `ln γ_h` and the norm of the read-out.
    ///
    /// # Errors
    /// [`Error::InputShape`] naming the argument if the shapes disagree, `key` is odd or
    /// below 4, or a decay is positive or NaN.
    pub fn new(
        heads: usize,
        key: usize,
        value: usize,
        [w_q, w_k, w_v, w_g, w_o]: [Array2<f32>; 5],
        log_gamma: Array1<f32>,
        xpos: bool,
        norm: HeadNorm,
    ) -> Result<Self> {
        const LAYER: &str = "Retention";
        let c = w_q.ncols();
        check_arg(
            key.is_multiple_of(2) && key >= 4,
            LAYER,
            "key size",
            "an even size ≥ 4",
            &[key],
        )?;
        check_dims(
            "Retention",
            &[
                ("W_q", w_q.dim(), (heads * key, c), "[H·K, C]"),
                ("W_k", w_k.dim(), (heads * key, c), "[H·K, C]"),
                ("W_v", w_v.dim(), (heads * value, c), "[H·V, C]"),
                ("W_g", w_g.dim(), (heads * value, c), "[H·V, C]"),
                ("W_o", w_o.dim(), (c, heads * value), "[C, H·V]"),
            ],
        )?;
        check_arg(
            log_gamma.len() == heads,
            LAYER,
            "ln γ",
            format!("[H] = [{heads}]"),
            log_gamma.shape(),
        )?;
        if let Some(h) = log_gamma.iter().position(|&g| g.is_nan() || g > 0.0) {
            return Err(Error::InputShape {
                what: format!("{LAYER}: ln γ of head {h} is {}", log_gamma[h]),
                expected: "ln γ ≤ 0 (γ ≤ 1)".into(),
                found: log_gamma.shape().to_vec(),
            });
        }
        check_arg(
            norm.weight.len() == heads * value,
            LAYER,
            "norm weight",
            format!("[H·V] = [{}]", heads * value),
            norm.weight.shape(),
        )?;
        let half = key / 2;
        let theta = thetas(key);
        let log_gate = Array1::from_shape_fn(heads * key, |c| {
            let (h, i) = (c / key, (c % key) / 2);
            let xpos_term = if xpos {
                ((i as f64 / half as f64 + 0.4) / 1.4).ln() / XPOS_SCALE_BASE
            } else {
                0.0
            };
            (log_gamma[h] as f64 + xpos_term) as f32
        });
        Ok(Retention {
            heads,
            key,
            value,
            w_q: Linear::from(w_q),
            w_k: Linear::from(w_k),
            w_v: Linear::from(w_v),
            w_g: Linear::from(w_g),
            w_o: Linear::from(w_o),
            log_gamma,
            log_gate,
            xpos,
            theta,
            norm,
        })
    }

    /// Random projections of width `c` from `seed`, `V = 2K`, the standard `γ_h` and an
    /// affine-free GroupNorm (eps 1e-5).
    pub fn random(c: usize, heads: usize, key: usize, xpos: bool, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let value = 2 * key;
        let b = (3.0 / c as f32).sqrt();
        let mut m = |o, i| rng.matrix(o, i, -b, b);
        let ws = [
            m(heads * key, c),
            m(heads * key, c),
            m(heads * value, c),
            m(heads * value, c),
            m(c, heads * value),
        ];
        let norm = HeadNorm::plain(heads * value, heads, 1e-5, NormKind::Layer);
        Retention::new(heads, key, value, ws, log_gammas(heads), xpos, norm)
            .expect("random layers have consistent shapes")
    }

    /// Width `C`.
    pub fn width(&self) -> usize {
        self.w_q.dim().1
    }

    /// `R(nθ) x` for every head of every row, `n = start + row`.
    ///
    /// # Shapes
    /// `xs: [T, H·K]` → `[T, H·K]`.
    pub fn rotate(&self, xs: ArrayView2<f32>, start: u64) -> Array2<f32> {
        let mut out = xs.to_owned();
        for (t, mut row) in out.rows_mut().into_iter().enumerate() {
            let n = (start + t as u64) as f64;
            for (i, &th) in self.theta.iter().enumerate() {
                let angle = (n * th).rem_euclid(std::f64::consts::TAU);
                let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
                for h in 0..self.heads {
                    let j = h * self.key + 2 * i;
                    let (a, b) = (row[j], row[j + 1]);
                    row[j] = a * cos - b * sin;
                    row[j + 1] = b * cos + a * sin;
                }
            }
        }
        out
    }

    /// The kernel's inputs `(q̂, k̂, v)` for rows starting at position `start`.
    pub fn qkv(&self, xs: ArrayView2<f32>, start: u64) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        let q = self.rotate(self.w_q.forward(xs).view(), start);
        let mut k = self.rotate(self.w_k.forward(xs).view(), start);
        k *= (self.key as f32).powf(-0.5);
        (q, k, self.w_v.forward(xs))
    }

    /// Raw retention `O` (before the norm and gate) on `path`, advancing the state.
    ///
    /// # Shapes
    /// `xs: [T, C]` → `[T, H·V]`.
    pub fn retain(
        &self,
        xs: ArrayView2<f32>,
        state: &mut RetentionState,
        path: Path,
    ) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.width(), "Retention: width");
        let (q, k, v) = self.qkv(xs, state.position);
        let gate = if self.xpos {
            Gate::Key(self.log_gate.view())
        } else {
            Gate::Head(self.log_gamma.view())
        };
        let x = Inputs {
            gate,
            ..Inputs::new(q.view(), k.view(), v.view())
        };
        let o = run(&x, &mut state.kernel, path);
        state.position += xs.nrows() as u64;
        o
    }
}

impl SequenceMixer for Retention {
    type State = RetentionState;

    fn init_state(&self) -> RetentionState {
        RetentionState {
            kernel: OuterState::new(self.heads, self.key, self.value, false),
            position: 0,
        }
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut RetentionState) -> Array2<f32> {
        let path = if xs.nrows() <= 1 {
            Path::Recurrent
        } else {
            Path::Chunkwise(64)
        };
        self.forward_path(xs, state, path)
    }
}

impl MultiPath for Retention {
    fn forward_path(
        &self,
        xs: ArrayView2<f32>,
        state: &mut RetentionState,
        path: Path,
    ) -> Array2<f32> {
        let mut o = self.retain(xs, state, path);
        self.norm.forward_inplace(&mut o);
        let mut g = self.w_g.forward(xs);
        silu(&mut g);
        o *= &g;
        self.w_o.forward(o.view())
    }
}

/// The rotation frequencies of a key size (exposed for references): `θ_i = 10000^{−i/(K/2−1)}`.
pub fn thetas(key: usize) -> Vec<f64> {
    let half = key / 2;
    (0..half)
        .map(|i| 10000f64.powf(-(i as f64) / (half as f64 - 1.0)))
        .collect()
}
