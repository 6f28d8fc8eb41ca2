//! minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): the GRU and LSTM with the
//! previous hidden state dropped from the gates and the candidate, which leaves a linear
//! recurrence `h_t = a_t ⊙ h_{t−1} + b_t` whose coefficients depend on `x_t` only.
//!
//! ```text
//! g(x) = x + ½ (x ≥ 0),  σ(x) (x < 0)            (positive, so that h stays positive)
//! minGRU:   z = σ(W_z x),  h̃ = g(W_h x),  h_t = (1 − z) ⊙ h_{t−1} + z ⊙ h̃
//! minLSTM:  f = σ(W_f x),  i = σ(W_i x),  f' = f / (f + i),  i' = i / (f + i),
//!           h̃ = g(W_h x),  h_t = f' ⊙ h_{t−1} + i' ⊙ h̃
//! ```
//!
//! Each layer computes its coefficients once, in log space (`log a_t`, `log b_t`,
//! [`MinCell::log_coeffs`]); every path uses them:
//! - [`Path::Recurrent`]: `h_t = e^{log a_t} h_{t−1} + e^{log b_t}`;
//! - [`Path::Parallel`]: Heinsen's log-space scan over the whole call,
//!   `log h_t = a*_t + logcumsumexp_{s ≤ t}(log b_s − a*_s)` with `a*_t = Σ_{s ≤ t} log a_s`
//!   and the carried state `log h_0` as the first term of the cumulative sum (accumulated in
//!   f64);
//! - [`Path::Chunkwise(c)`](Path::Chunkwise): the same scan over chunks of `c` tokens, the state
//!   carried between them ([`by_chunks`]).
//!
//! The scans take the logarithm of the carried state, so they need `h ≥ 0`: every state these
//! layers produce from [`SequenceMixer::init_state`] is (`g > 0`, coefficients in `(0, 1)`); a
//! state with a negative entry gives NaN on the scan paths.
//!
//! **Widths.** Inputs of width `I` map to hidden states of width `H`, the outputs.
//! [`SequenceMixer`]'s `[T, C] → [T, C]` holds when `I = H`; with `I ≠ H` every path returns
//! `[T, H]`. State: `h`, `H` numbers.

use crate::error::Result;
use crate::mixer::random::Rng;
use crate::mixer::{by_chunks, check_dims, MultiPath, Path, SequenceMixer};
use crate::ops::Linear;
use ndarray::{concatenate, s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis, Zip};
use std::marker::PhantomData;

/// `log σ(x) = −softplus(−x)`, stable for both signs.
fn log_sigmoid(x: f32) -> f32 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// `log g(x)`: `ln(x + ½)` for `x ≥ 0`, `log σ(x)` below.
fn log_g(x: f32) -> f32 {
    if x >= 0.0 {
        (x + 0.5).ln()
    } else {
        log_sigmoid(x)
    }
}

/// `ln(eᵃ + eᵇ)`, with `−∞` allowed on either side.
fn log_add_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// The gate formulas that tell minGRU from minLSTM.
pub trait MinCell: Send + Sync + std::fmt::Debug + Clone {
    /// The layer's name in errors.
    const NAME: &'static str;
    /// The projections' names, in the order they are stacked in [`MinRnn::w`].
    const PROJECTIONS: &'static [&'static str];

    /// `log a` and `log b` of one token from its projections `p` (`[k·H]`, stacked in the
    /// order of [`PROJECTIONS`](MinCell::PROJECTIONS)).
    fn log_coeffs(p: ArrayView1<f32>, log_a: ArrayViewMut1<f32>, log_b: ArrayViewMut1<f32>);
}

/// minGRU: projections `W_z`, `W_h`.
#[derive(Clone, Copy, Debug)]
pub struct MinGruCell;

impl MinCell for MinGruCell {
    const NAME: &'static str = "MinGru";
    const PROJECTIONS: &'static [&'static str] = &["W_z", "W_h"];

    fn log_coeffs(p: ArrayView1<f32>, log_a: ArrayViewMut1<f32>, log_b: ArrayViewMut1<f32>) {
        let n = log_a.len();
        // log(1 − z) = log σ(−k),  log(z h̃) = log σ(k) + log g(W_h x).
        Zip::from(log_a)
            .and(log_b)
            .and(p.slice(s![..n]))
            .and(p.slice(s![n..]))
            .for_each(|la, lb, &k, &c| {
                *la = log_sigmoid(-k);
                *lb = log_sigmoid(k) + log_g(c);
            });
    }
}

/// minLSTM: projections `W_f`, `W_i`, `W_h`.
#[derive(Clone, Copy, Debug)]
pub struct MinLstmCell;

impl MinCell for MinLstmCell {
    const NAME: &'static str = "MinLstm";
    const PROJECTIONS: &'static [&'static str] = &["W_f", "W_i", "W_h"];

    fn log_coeffs(p: ArrayView1<f32>, log_a: ArrayViewMut1<f32>, log_b: ArrayViewMut1<f32>) {
        let n = log_a.len();
        // log f' = log f − log(f + i),  log(i' h̃) = log i − log(f + i) + log g(W_h x).
        Zip::from(log_a)
            .and(log_b)
            .and(p.slice(s![..n]))
            .and(p.slice(s![n..2 * n]))
            .and(p.slice(s![2 * n..]))
            .for_each(|la, lb, &kf, &ki, &c| {
                let (lf, li) = (log_sigmoid(kf), log_sigmoid(ki));
                let norm = log_add_exp(lf as f64, li as f64) as f32;
                *la = lf - norm;
                *lb = li - norm + log_g(c);
            });
    }
}

/// A minimal recurrent layer: [`MinGru`] or [`MinLstm`].
#[derive(Clone, Debug)]
pub struct MinRnn<K: MinCell> {
    /// The projections stacked in the order of [`MinCell::PROJECTIONS`], `[k·H, I]`.
    pub w: Linear,
    hidden: usize,
    cell: PhantomData<K>,
}

/// minGRU (`h_t = (1 − z) h_{t−1} + z h̃`).
pub type MinGru = MinRnn<MinGruCell>;

/// minLSTM (`h_t = f' h_{t−1} + i' h̃`).
pub type MinLstm = MinRnn<MinLstmCell>;

impl<K: MinCell> MinRnn<K> {
    /// A layer from its projections `[H, I]`, in the order of [`MinCell::PROJECTIONS`]
    /// (minGRU `[W_z, W_h]`, minLSTM `[W_f, W_i, W_h]`), without biases as in the paper's
    /// equations.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the first projection whose shape
    /// differs from the first one's, or `projections` when their number is wrong.
    pub fn new(projections: &[Array2<f32>]) -> Result<Self> {
        let k = K::PROJECTIONS.len();
        crate::mixer::check_arg(
            projections.len() == k,
            K::NAME,
            "projections (count)",
            format!("{k}: {}", K::PROJECTIONS.join(", ")),
            &[projections.len()],
        )?;
        let dim = projections[0].dim();
        let checks: Vec<_> = K::PROJECTIONS
            .iter()
            .zip(projections)
            .map(|(&name, w)| (name, w.dim(), dim, "[H, I]"))
            .collect();
        check_dims(K::NAME, &checks)?;
        let views: Vec<_> = projections.iter().map(|w| w.view()).collect();
        let w = concatenate(Axis(0), &views).expect("same widths, checked");
        Ok(MinRnn {
            w: Linear::from(w),
            hidden: dim.0,
            cell: PhantomData,
        })
    }

    /// Random projections uniform with the variance of N(0, 1/I) from `seed`.
    pub fn random(input: usize, hidden: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let b = (3.0 / input as f32).sqrt();
        let ws: Vec<_> = K::PROJECTIONS
            .iter()
            .map(|_| rng.matrix(hidden, input, -b, b))
            .collect();
        Self::new(&ws).expect("random layers have consistent shapes")
    }

    /// Input width `I`.
    pub fn input(&self) -> usize {
        self.w.dim().1
    }

    /// Hidden (and output) width `H`.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// `(log a, log b)`, both `[T, H]`, from the projections `p = x Wᵀ`, `[T, k·H]`.
    pub fn log_coeffs(&self, p: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
        let shape = (p.nrows(), self.hidden);
        let (mut la, mut lb) = (Array2::zeros(shape), Array2::zeros(shape));
        for ((p, a), b) in p.rows().into_iter().zip(la.rows_mut()).zip(lb.rows_mut()) {
            K::log_coeffs(p, a, b);
        }
        (la, lb)
    }

    /// One algorithm over projections `p`, `[T, k·H]`.
    fn run(&self, p: ArrayView2<f32>, h: &mut Array1<f32>, path: Path) -> Array2<f32> {
        let scan = match path {
            Path::Recurrent => scan_recurrent,
            Path::Parallel => scan_log_space,
            Path::Chunkwise(c) => {
                return by_chunks(p, h, c, self.hidden, |part, h| {
                    self.run(part, h, Path::Parallel)
                })
            }
        };
        let (la, lb) = self.log_coeffs(p);
        scan(la.view(), lb.view(), h)
    }
}

/// `h_t = e^{log a_t} h_{t−1} + e^{log b_t}` token by token; returns every `h_t`, `[T, H]`.
pub fn scan_recurrent(
    log_a: ArrayView2<f32>,
    log_b: ArrayView2<f32>,
    h: &mut Array1<f32>,
) -> Array2<f32> {
    let mut out = Array2::zeros(log_a.raw_dim());
    for ((la, lb), mut y) in log_a
        .rows()
        .into_iter()
        .zip(log_b.rows())
        .zip(out.rows_mut())
    {
        Zip::from(&mut *h)
            .and(la)
            .and(lb)
            .for_each(|h, &a, &b| *h = a.exp() * *h + b.exp());
        y.assign(h);
    }
    out
}

/// Heinsen's log-space scan of `h_t = a_t h_{t−1} + b_t`: per channel,
/// `log h_t = a*_t + ln(h_0 + Σ_{s ≤ t} e^{log b_s − a*_s})` with `a*_t = Σ_{s ≤ t} log a_s`
/// (the sum as a running log-add-exp from `ln h_0`, in f64). Needs `h ≥ 0`; returns every
/// `h_t`, `[T, H]`.
pub fn scan_log_space(
    log_a: ArrayView2<f32>,
    log_b: ArrayView2<f32>,
    h: &mut Array1<f32>,
) -> Array2<f32> {
    let mut out = Array2::zeros(log_a.raw_dim());
    let mut a_star = vec![0.0f64; h.len()];
    let mut acc: Vec<f64> = h.iter().map(|&h| (h as f64).ln()).collect();
    for ((la, lb), mut y) in log_a
        .rows()
        .into_iter()
        .zip(log_b.rows())
        .zip(out.rows_mut())
    {
        for (j, y) in y.iter_mut().enumerate() {
            a_star[j] += la[j] as f64;
            acc[j] = log_add_exp(acc[j], lb[j] as f64 - a_star[j]);
            *y = (a_star[j] + acc[j]).exp() as f32;
        }
    }
    if let Some(last) = out.rows().into_iter().next_back() {
        h.assign(&last);
    }
    out
}

impl<K: MinCell> SequenceMixer for MinRnn<K> {
    type State = Array1<f32>;

    fn init_state(&self) -> Array1<f32> {
        Array1::zeros(self.hidden)
    }

    /// The recurrent path (the fastest on a CPU: the coefficients are computed for all rows at
    /// once either way).
    ///
    /// # Shapes
    /// `xs: [T, I]` → `[T, H]`.
    ///
    /// # Panics
    /// If `I` is not the layer's input width.
    fn forward(&self, xs: ArrayView2<f32>, h: &mut Array1<f32>) -> Array2<f32> {
        self.forward_path(xs, h, Path::Recurrent)
    }

    /// One token per sequence, the projections read once for the batch.
    ///
    /// # Shapes
    /// `xs: [B, I]` → `[B, H]`.
    ///
    /// # Panics
    /// If `states.len() != B` or `I` is not the layer's input width.
    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut Array1<f32>]) -> Array2<f32> {
        assert_eq!(states.len(), xs.nrows(), "step_batch: one state per row");
        assert_eq!(xs.ncols(), self.input(), "{}: input width", K::NAME);
        let p = self.w.forward(xs);
        let mut out = Array2::zeros((xs.nrows(), self.hidden));
        for ((p, h), mut y) in p
            .rows()
            .into_iter()
            .zip(states.iter_mut())
            .zip(out.rows_mut())
        {
            let row = self.run(p.insert_axis(Axis(0)), h, Path::Recurrent);
            y.assign(&row.row(0));
        }
        out
    }
}

impl<K: MinCell> MultiPath for MinRnn<K> {
    /// # Shapes
    /// `xs: [T, I]` → `[T, H]`.
    fn forward_path(&self, xs: ArrayView2<f32>, h: &mut Array1<f32>, path: Path) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.input(), "{}: input width", K::NAME);
        self.run(self.w.forward(xs).view(), h, path)
    }
}
