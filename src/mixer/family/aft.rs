//! Attention Free Transformer layers (Zhai et al. 2021), causal (spec/mixers.md §5).
//!
//! All three share the form, per channel `c` and position `t`:
//!
//! ```text
//! Y_t = σ(Q_t) ⊙ Σ_{s≤t} e^{K_s + w_{t,s}} ⊙ V_s ⊘ Σ_{s≤t} e^{K_s + w_{t,s}}
//! out_t = W_o Y_t,   Q, K, V = x W_qᵀ, x W_kᵀ, x W_vᵀ
//! ```
//!
//! - [`AftSimple`]: `w ≡ 0`. A state of three numbers per channel (the running sums and their
//!   exponent, exactly RWKV-4's `(aa, bb, pp)`): it is RWKV-4's WKV with `decay = 0`,
//!   `first = 0` ([`wkv4_scan`](crate::mixer::rwkv4::wkv4_scan),
//!   [`wkv4_parallel`](crate::mixer::rwkv4::wkv4_parallel),
//!   [`wkv4_chunkwise`](crate::mixer::rwkv4::wkv4_chunkwise)).
//! - [`AftFull`]: a learned pairwise bias `w ∈ R^{T_max×T_max}`. `E = e^{w}` has full
//!   semiseparable rank (spec/mixers.md §1.2), so **no fixed-size state exists**: the recurrent
//!   form keeps the whole history `(K_s, V_s)` (`O(t·C)` memory and work per token) and stops at
//!   `T_max` tokens, the size of the bias table.
//! - [`AftLocal`]: the bias applies only inside a window, `w'_{t,s} = w_{t,s}` for `t − s < s_w`
//!   and `0` (not `−∞`) outside, so older tokens still count with weight `e^{K}`. The state is
//!   the running sums `(aa, bb, pp)` of the tokens that left the window plus the last `s_w − 1`
//!   tokens' `(K, V)`: `O(s_w·C)`. The bias is indexed by absolute position, as in the paper, so
//!   it too stops at `T_max`.
//!
//! Every sum is evaluated as a log-sum-exp: the largest exponent of each row and channel is
//! subtracted first, so keys of any size are safe. The parallel forms compute all rows of a
//! call at once (`O(T·(T + history))` per channel); chunkwise forms run the parallel form on
//! chunks with the state carried.

use crate::error::Result;
use crate::mixer::random::Rng;
use crate::mixer::rwkv4::{wkv4_path, Rwkv4State, PP_INIT};
use crate::mixer::{by_chunks, check_arg, check_dims, MultiPath, Path, SequenceMixer};
use crate::ops::{sigmoid, Linear};
use ndarray::{concatenate, s, Array1, Array2, ArrayView2, Axis};

/// The four `[C, C]` projections of an AFT layer.
#[derive(Clone, Debug)]
pub struct AftProjections {
    /// `W_q`, `[C, C]`.
    pub w_q: Linear,
    /// `W_k`, `[C, C]`.
    pub w_k: Linear,
    /// `W_v`, `[C, C]`.
    pub w_v: Linear,
    /// `W_o`, `[C, C]`.
    pub w_o: Linear,
}

impl AftProjections {
    /// From `[W_q, W_k, W_v, W_o]`, each `[C, C]`.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the first matrix that is not `[C, C]` for the `C` of
    /// `W_q`'s rows.
    pub fn new([w_q, w_k, w_v, w_o]: [Array2<f32>; 4]) -> Result<Self> {
        let c = w_q.nrows();
        let square = "[C, C]";
        check_dims(
            "Aft",
            &[
                ("W_q", w_q.dim(), (c, c), square),
                ("W_k", w_k.dim(), (c, c), square),
                ("W_v", w_v.dim(), (c, c), square),
                ("W_o", w_o.dim(), (c, c), square),
            ],
        )?;
        Ok(AftProjections {
            w_q: Linear::from(w_q),
            w_k: Linear::from(w_k),
            w_v: Linear::from(w_v),
            w_o: Linear::from(w_o),
        })
    }

    fn random(c: usize, rng: &mut Rng) -> Self {
        AftProjections {
            w_q: rng.linear(c, c),
            w_k: rng.linear(c, c),
            w_v: rng.linear(c, c),
            w_o: rng.linear(c, c),
        }
    }

    /// Width `C`.
    pub fn width(&self) -> usize {
        self.w_q.dim().0
    }

    /// `out = W_o (σ(x W_qᵀ) ⊙ avg(K, V))` with the weighted average supplied by the caller.
    #[track_caller]
    fn apply(
        &self,
        xs: ArrayView2<f32>,
        average: impl FnOnce(ArrayView2<f32>, ArrayView2<f32>) -> Array2<f32>,
    ) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.width(), "Aft: width");
        let mut q = self.w_q.forward(xs);
        sigmoid(&mut q);
        let k = self.w_k.forward(xs);
        let v = self.w_v.forward(xs);
        let y = average(k.view(), v.view());
        self.w_o.forward((q * y).view())
    }
}

/// Causal AFT-simple.
#[derive(Clone, Debug)]
pub struct AftSimple {
    /// The projections.
    pub proj: AftProjections,
    zeros: Array1<f32>,
}

impl AftSimple {
    /// From its projections.
    pub fn new(proj: AftProjections) -> Self {
        let zeros = Array1::zeros(proj.width());
        AftSimple { proj, zeros }
    }

    /// Random projections of width `c` from `seed`.
    pub fn random(c: usize, seed: u64) -> Self {
        AftSimple::new(AftProjections::random(c, &mut Rng::new(seed)))
    }
}

impl SequenceMixer for AftSimple {
    /// RWKV-4's `(aa, bb, pp)` (`x_prev` is empty: AFT has no token shift).
    type State = Rwkv4State;

    fn init_state(&self) -> Rwkv4State {
        let c = self.proj.width();
        Rwkv4State {
            x_prev: Array1::zeros(0),
            aa: Array1::zeros(c),
            bb: Array1::zeros(c),
            pp: Array1::from_elem(c, PP_INIT),
        }
    }

    /// The recurrence: `O(C)` per token, cheaper than any quadratic form.
    fn forward(&self, xs: ArrayView2<f32>, state: &mut Rwkv4State) -> Array2<f32> {
        self.forward_path(xs, state, Path::Recurrent)
    }
}

impl MultiPath for AftSimple {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut Rwkv4State, path: Path) -> Array2<f32> {
        let z = self.zeros.view();
        self.proj
            .apply(xs, |k, v| wkv4_path(k, v, z, z, state, path))
    }
}

/// The history an [`AftFull`] or [`AftLocal`] layer keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct AftHistory {
    /// Position of the next token (tokens seen so far).
    pub position: usize,
    /// Kept keys `K_s`, `[n, C]` (all past tokens for AFT-full, the last `s_w − 1` for
    /// AFT-local), oldest first.
    pub keys: Array2<f32>,
    /// The matching values `V_s`, `[n, C]`.
    pub values: Array2<f32>,
    /// AFT-local only: the running sums of the tokens that left the window, as RWKV-4's
    /// `(aa, bb, pp)` (`x_prev` empty). `None` for AFT-full.
    pub outside: Option<Rwkv4State>,
}

/// The log-sum-exp weighted average of `values` for query positions `p0..p0 + rows`, over the
/// items at positions `first..first + n` not after each query, with exponent `K_q + bias(p, q)`,
/// plus the `outside` sums (exponent `pp`) when given.
fn weighted_average(
    keys: ArrayView2<f32>,
    values: ArrayView2<f32>,
    first: usize,
    p0: usize,
    rows: usize,
    bias: impl Fn(usize, usize) -> f32,
    outside: Option<&Rwkv4State>,
) -> Array2<f32> {
    let c = keys.ncols();
    let mut y = Array2::zeros((rows, c));
    let mut m = vec![0.0f32; c];
    let mut num = vec![0.0f32; c];
    let mut den = vec![0.0f32; c];
    for j in 0..rows {
        let p = p0 + j;
        let items = p + 1 - first; // positions first..=p
        m.iter_mut().for_each(|m| *m = f32::NEG_INFINITY);
        if let Some(o) = outside {
            m.iter_mut().zip(&o.pp).for_each(|(m, &pp)| *m = m.max(pp));
        }
        for i in 0..items {
            let b = bias(p, first + i);
            m.iter_mut()
                .zip(keys.row(i))
                .for_each(|(m, &k)| *m = m.max(k + b));
        }
        match outside {
            Some(o) => {
                for ch in 0..c {
                    let e = (o.pp[ch] - m[ch]).exp();
                    num[ch] = o.aa[ch] * e;
                    den[ch] = o.bb[ch] * e;
                }
            }
            None => {
                num.iter_mut().for_each(|x| *x = 0.0);
                den.iter_mut().for_each(|x| *x = 0.0);
            }
        }
        for i in 0..items {
            let b = bias(p, first + i);
            let (k, v) = (keys.row(i), values.row(i));
            for ch in 0..c {
                let e = (k[ch] + b - m[ch]).exp();
                num[ch] += e * v[ch];
                den[ch] += e;
            }
        }
        y.row_mut(j)
            .iter_mut()
            .zip(num.iter().zip(&den))
            .for_each(|(y, (n, d))| *y = n / d);
    }
    y
}

/// Causal AFT-full with a learned pairwise position bias.
#[derive(Clone, Debug)]
pub struct AftFull {
    /// The projections.
    pub proj: AftProjections,
    /// The bias `w_{t,s}`, `[T_max, T_max]` (only `s ≤ t` is read).
    pub bias: Array2<f32>,
}

impl AftFull {
    /// From its projections and bias table.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) if the bias is not square.
    pub fn new(proj: AftProjections, bias: Array2<f32>) -> Result<Self> {
        let t = bias.nrows();
        check_dims("AftFull", &[("bias", bias.dim(), (t, t), "[T_max, T_max]")])?;
        Ok(AftFull { proj, bias })
    }

    /// Random projections of width `c` and a bias in `[−1, 1]` for `t_max` tokens, from `seed`.
    pub fn random(c: usize, t_max: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let proj = AftProjections::random(c, &mut rng);
        AftFull::new(proj, rng.matrix(t_max, t_max, -1.0, 1.0)).expect("a square bias")
    }

    /// `T_max`: the most tokens a state can see.
    pub fn max_len(&self) -> usize {
        self.bias.nrows()
    }

    /// All rows of one call in the parallel form, appending them to the history.
    #[track_caller]
    fn call(&self, xs: ArrayView2<f32>, state: &mut AftHistory) -> Array2<f32> {
        let p0 = state.position;
        let t = xs.nrows();
        assert!(
            p0 + t <= self.max_len(),
            "AftFull: {} tokens exceed the bias table's T_max = {}",
            p0 + t,
            self.max_len()
        );
        self.proj.apply(xs, |k, v| {
            state.keys = concatenate(Axis(0), &[state.keys.view(), k]).expect("same width");
            state.values = concatenate(Axis(0), &[state.values.view(), v]).expect("same width");
            state.position += t;
            let w = &self.bias;
            weighted_average(
                state.keys.view(),
                state.values.view(),
                0,
                p0,
                t,
                |p, q| w[[p, q]],
                None,
            )
        })
    }
}

impl SequenceMixer for AftFull {
    type State = AftHistory;

    fn init_state(&self) -> AftHistory {
        let c = self.proj.width();
        AftHistory {
            position: 0,
            keys: Array2::zeros((0, c)),
            values: Array2::zeros((0, c)),
            outside: None,
        }
    }

    /// # Panics
    /// If the state would see more than `T_max` tokens.
    fn forward(&self, xs: ArrayView2<f32>, state: &mut AftHistory) -> Array2<f32> {
        self.call(xs, state)
    }
}

impl MultiPath for AftFull {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut AftHistory, path: Path) -> Array2<f32> {
        let c = self.proj.width();
        match path {
            Path::Parallel => self.call(xs, state),
            Path::Recurrent => by_chunks(xs, state, 1, c, |x, s| self.call(x, s)),
            Path::Chunkwise(n) => by_chunks(xs, state, n, c, |x, s| self.call(x, s)),
        }
    }
}

/// Causal AFT-local: the bias only inside a window of `window` tokens.
#[derive(Clone, Debug)]
pub struct AftLocal {
    /// The projections.
    pub proj: AftProjections,
    /// The bias `w_{t,s}`, `[T_max, T_max]` (read for `0 ≤ t − s < window`).
    pub bias: Array2<f32>,
    /// The window `s_w ≥ 1` (the current token included).
    pub window: usize,
}

impl AftLocal {
    /// From its projections, bias table and window.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) if the bias is not square or the window is 0.
    pub fn new(proj: AftProjections, bias: Array2<f32>, window: usize) -> Result<Self> {
        let t = bias.nrows();
        check_dims(
            "AftLocal",
            &[("bias", bias.dim(), (t, t), "[T_max, T_max]")],
        )?;
        check_arg(window > 0, "AftLocal", "window", "at least 1", &[window])?;
        Ok(AftLocal { proj, bias, window })
    }

    /// Random projections of width `c`, a bias in `[−1, 1]` for `t_max` tokens and a window,
    /// from `seed`.
    pub fn random(c: usize, t_max: usize, window: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let proj = AftProjections::random(c, &mut rng);
        AftLocal::new(proj, rng.matrix(t_max, t_max, -1.0, 1.0), window)
            .expect("a square bias and a positive window")
    }

    /// `T_max`.
    pub fn max_len(&self) -> usize {
        self.bias.nrows()
    }

    #[track_caller]
    fn call(&self, xs: ArrayView2<f32>, state: &mut AftHistory) -> Array2<f32> {
        let p0 = state.position;
        let t = xs.nrows();
        assert!(
            p0 + t <= self.max_len(),
            "AftLocal: {} tokens exceed the bias table's T_max = {}",
            p0 + t,
            self.max_len()
        );
        let window = self.window;
        self.proj.apply(xs, |k, v| {
            let keys = concatenate(Axis(0), &[state.keys.view(), k]).expect("same width");
            let values = concatenate(Axis(0), &[state.values.view(), v]).expect("same width");
            let first = p0 - state.keys.nrows();
            let w = &self.bias;
            let outside = state.outside.as_mut().expect("AftLocal keeps outside sums");
            let y = weighted_average(
                keys.view(),
                values.view(),
                first,
                p0,
                t,
                |p, q| if p - q < window { w[[p, q]] } else { 0.0 },
                Some(outside),
            );
            // Keep the last window − 1 items; fold the older ones into the outside sums.
            let keep = (window - 1).min(keys.nrows());
            let leave = keys.nrows() - keep;
            for i in 0..leave {
                let (k, v) = (keys.row(i), values.row(i));
                for ch in 0..k.len() {
                    let p = outside.pp[ch].max(k[ch]);
                    let (e1, e2) = ((outside.pp[ch] - p).exp(), (k[ch] - p).exp());
                    outside.aa[ch] = e1 * outside.aa[ch] + e2 * v[ch];
                    outside.bb[ch] = e1 * outside.bb[ch] + e2;
                    outside.pp[ch] = p;
                }
            }
            state.keys = keys.slice(s![leave.., ..]).to_owned();
            state.values = values.slice(s![leave.., ..]).to_owned();
            state.position += t;
            y
        })
    }
}

impl SequenceMixer for AftLocal {
    type State = AftHistory;

    fn init_state(&self) -> AftHistory {
        let c = self.proj.width();
        AftHistory {
            position: 0,
            keys: Array2::zeros((0, c)),
            values: Array2::zeros((0, c)),
            outside: Some(Rwkv4State {
                x_prev: Array1::zeros(0),
                aa: Array1::zeros(c),
                bb: Array1::zeros(c),
                pp: Array1::from_elem(c, PP_INIT),
            }),
        }
    }

    /// # Panics
    /// If the state would see more than `T_max` tokens.
    fn forward(&self, xs: ArrayView2<f32>, state: &mut AftHistory) -> Array2<f32> {
        self.call(xs, state)
    }
}

impl MultiPath for AftLocal {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut AftHistory, path: Path) -> Array2<f32> {
        let c = self.proj.width();
        match path {
            Path::Parallel => self.call(xs, state),
            Path::Recurrent => by_chunks(xs, state, 1, c, |x, s| self.call(x, s)),
            Path::Chunkwise(n) => by_chunks(xs, state, n, c, |x, s| self.call(x, s)),
        }
    }
}
