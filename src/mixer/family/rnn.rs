//! The classic gated recurrent networks, LSTM (Hochreiter & Schmidhuber 1997) and GRU (Cho et
//! al. 2014), in PyTorch's conventions (spec/mixers.md §14), so that the weights of a one-layer
//! `torch.nn.LSTM` / `torch.nn.GRU` load as they are ([`Rnn::from_torch`]).
//!
//! ```text
//! LSTM (gate order i, f, g, o):  [i f g o] = W_ih x + b_ih + W_hh h_{t−1} + b_hh
//!     i, f, o = σ(·),  g = tanh(·),  c_t = f ⊙ c_{t−1} + i ⊙ g,  h_t = o ⊙ tanh(c_t)
//! GRU (gate order r, z, n):  [a_r a_z a_n] = W_ih x + b_ih,  [b_r b_z b_n] = W_hh h_{t−1} + b_hh
//!     r = σ(a_r + b_r),  z = σ(a_z + b_z),  n = tanh(a_n + r ⊙ b_n),  h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
//! ```
//!
//! (The GRU's reset gate multiplies `W_hn h + b_hn` including its bias, as in PyTorch.)
//!
//! **Recurrent path only.** The gates depend nonlinearly on `h_{t−1}`, so there is no parallel
//! or chunkwise form: [`SequenceMixer::forward`] projects all inputs at once (`W_ih x + b_ih`,
//! one matrix product) and then runs the recurrence token by token. These layers do not
//! implement [`MultiPath`](crate::mixer::MultiPath); the minimal variants that do are in
//! [`min_rnn`](crate::mixer::min_rnn).
//!
//! **Widths.** The layer maps inputs of width `I` to outputs (the hidden states `h_t`) of width
//! `H`. [`SequenceMixer`]'s `[T, C] → [T, C]` holds when `I = H` (what a residual stack needs);
//! with `I ≠ H` every path returns `[T, H]` instead, and `step_batch` returns `[B, H]`.
//!
//! State: LSTM `(h, c)`, `2H` numbers; GRU `h`, `H` numbers.

use crate::error::Result;
use crate::mixer::random::Rng;
use crate::mixer::{check_arg, check_dims, SequenceMixer};
use crate::ops::Linear;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1};
use std::marker::PhantomData;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The element-wise update of one gated cell: the part that tells an LSTM from a GRU.
pub trait Cell: Send + Sync + std::fmt::Debug + Clone {
    /// The layer's name in errors.
    const NAME: &'static str;
    /// Number of gate blocks of `H` rows in `W_ih` and `W_hh` (LSTM 4, GRU 3).
    const GATES: usize;
    /// Everything carried from one token to the next.
    type State: Clone + Send + std::fmt::Debug;

    /// The zero state of `hidden` units.
    fn zero(hidden: usize) -> Self::State;

    /// The hidden state `h`, `[H]`.
    fn h(state: &Self::State) -> ArrayView1<'_, f32>;

    /// One token: `xp = W_ih x + b_ih` and `hp = W_hh h_{t−1} + b_hh` (both `[GATES·H]`) update
    /// `state`.
    fn update(xp: ArrayView1<f32>, hp: ArrayView1<f32>, state: &mut Self::State);
}

/// The LSTM cell (gate order i, f, g, o).
#[derive(Clone, Copy, Debug)]
pub struct LstmCell;

/// The state of an LSTM: hidden `h` and cell `c`, both `[H]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LstmState {
    /// Hidden state `h`.
    pub h: Array1<f32>,
    /// Cell state `c`.
    pub c: Array1<f32>,
}

impl Cell for LstmCell {
    const NAME: &'static str = "Lstm";
    const GATES: usize = 4;
    type State = LstmState;

    fn zero(hidden: usize) -> LstmState {
        LstmState {
            h: Array1::zeros(hidden),
            c: Array1::zeros(hidden),
        }
    }

    fn h(state: &LstmState) -> ArrayView1<'_, f32> {
        state.h.view()
    }

    fn update(xp: ArrayView1<f32>, hp: ArrayView1<f32>, state: &mut LstmState) {
        let n = state.h.len();
        let pre = |k: usize, j: usize| xp[k * n + j] + hp[k * n + j];
        for j in 0..n {
            let i = sigmoid(pre(0, j));
            let f = sigmoid(pre(1, j));
            let g = pre(2, j).tanh();
            let o = sigmoid(pre(3, j));
            let c = f * state.c[j] + i * g;
            state.c[j] = c;
            state.h[j] = o * c.tanh();
        }
    }
}

/// The GRU cell (gate order r, z, n).
#[derive(Clone, Copy, Debug)]
pub struct GruCell;

impl Cell for GruCell {
    const NAME: &'static str = "Gru";
    const GATES: usize = 3;
    type State = Array1<f32>;

    fn zero(hidden: usize) -> Array1<f32> {
        Array1::zeros(hidden)
    }

    fn h(state: &Array1<f32>) -> ArrayView1<'_, f32> {
        state.view()
    }

    fn update(xp: ArrayView1<f32>, hp: ArrayView1<f32>, h: &mut Array1<f32>) {
        let n = h.len();
        for j in 0..n {
            let r = sigmoid(xp[j] + hp[j]);
            let z = sigmoid(xp[n + j] + hp[n + j]);
            let c = (xp[2 * n + j] + r * hp[2 * n + j]).tanh();
            h[j] = (1.0 - z) * c + z * h[j];
        }
    }
}

/// A one-layer gated recurrent network with PyTorch's weights: [`Lstm`] or [`Gru`].
#[derive(Clone, Debug)]
pub struct Rnn<K: Cell> {
    /// `W_ih`, `[G·H, I]` (`weight_ih_l0`).
    pub w_ih: Linear,
    /// `W_hh`, `[G·H, H]` (`weight_hh_l0`).
    pub w_hh: Linear,
    /// `b_ih`, `[G·H]` (`bias_ih_l0`).
    pub b_ih: Array1<f32>,
    /// `b_hh`, `[G·H]` (`bias_hh_l0`).
    pub b_hh: Array1<f32>,
    cell: PhantomData<K>,
}

/// An LSTM layer (`torch.nn.LSTM`, one layer, one direction).
pub type Lstm = Rnn<LstmCell>;

/// A GRU layer (`torch.nn.GRU`, one layer, one direction).
pub type Gru = Rnn<GruCell>;

impl<K: Cell> Rnn<K> {
    /// A layer from PyTorch's `weight_ih_l0 [G·H, I]`, `weight_hh_l0 [G·H, H]`, `bias_ih_l0
    /// [G·H]` and `bias_hh_l0 [G·H]` (`G` = 4 for the LSTM, 3 for the GRU; `H` is read from
    /// `weight_hh`).
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the first argument whose shape
    /// disagrees, or `weight_hh` when its number of rows is not `G × hidden`.
    pub fn from_torch(
        weight_ih: Array2<f32>,
        weight_hh: Array2<f32>,
        bias_ih: Array1<f32>,
        bias_hh: Array1<f32>,
    ) -> Result<Self> {
        let g = K::GATES;
        let h = weight_hh.ncols();
        check_arg(
            weight_hh.nrows() == g * h,
            K::NAME,
            "weight_hh (rows must be the gate count times hidden)",
            format!("[{g}·H, H] = [{}, {h}]", g * h),
            weight_hh.shape(),
        )?;
        let i = weight_ih.ncols();
        check_dims(
            K::NAME,
            &[("weight_ih", weight_ih.dim(), (g * h, i), "[G·H, I]")],
        )?;
        for (name, b) in [("bias_ih", &bias_ih), ("bias_hh", &bias_hh)] {
            check_arg(
                b.len() == g * h,
                K::NAME,
                name,
                format!("[G·H] = [{}]", g * h),
                b.shape(),
            )?;
        }
        Ok(Rnn {
            w_ih: Linear::from(weight_ih),
            w_hh: Linear::from(weight_hh),
            b_ih: bias_ih,
            b_hh: bias_hh,
            cell: PhantomData,
        })
    }

    /// Random weights and biases uniform in `±1/√H` (PyTorch's initialisation) from `seed`.
    pub fn random(input: usize, hidden: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let b = 1.0 / (hidden as f32).sqrt();
        let gh = K::GATES * hidden;
        Self::from_torch(
            rng.matrix(gh, input, -b, b),
            rng.matrix(gh, hidden, -b, b),
            rng.vector(gh, -b, b),
            rng.vector(gh, -b, b),
        )
        .expect("random layers have consistent shapes")
    }

    /// Input width `I`.
    pub fn input(&self) -> usize {
        self.w_ih.dim().1
    }

    /// Hidden (and output) width `H`.
    pub fn hidden(&self) -> usize {
        self.w_hh.dim().1
    }

    /// `W_hh h + b_hh` into `out`.
    fn hidden_proj(&self, h: ArrayView1<f32>, mut out: ArrayViewMut1<f32>) {
        self.w_hh.matvec_into(h, out.view_mut());
        out += &self.b_hh;
    }

    /// `W_ih x + b_ih` for every row.
    fn input_proj(&self, xs: ArrayView2<f32>) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.input(), "{}: input width", K::NAME);
        let mut xp = self.w_ih.forward(xs);
        xp += &self.b_ih;
        xp
    }
}

impl<K: Cell> SequenceMixer for Rnn<K> {
    type State = K::State;

    fn init_state(&self) -> K::State {
        K::zero(self.hidden())
    }

    /// The recurrence over all rows (the input projections in one product first).
    ///
    /// # Shapes
    /// `xs: [T, I]` → `[T, H]`.
    ///
    /// # Panics
    /// If `I` is not the layer's input width.
    fn forward(&self, xs: ArrayView2<f32>, state: &mut K::State) -> Array2<f32> {
        let xp = self.input_proj(xs);
        let mut hp = Array1::zeros(K::GATES * self.hidden());
        let mut out = Array2::zeros((xs.nrows(), self.hidden()));
        for (x, mut y) in xp.rows().into_iter().zip(out.rows_mut()) {
            self.hidden_proj(K::h(state), hp.view_mut());
            K::update(x, hp.view(), state);
            y.assign(&K::h(state));
        }
        out
    }

    /// One token per sequence; both projections read their weights once for the batch.
    ///
    /// # Shapes
    /// `xs: [B, I]` → `[B, H]`.
    ///
    /// # Panics
    /// If `states.len() != B` or `I` is not the layer's input width.
    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut K::State]) -> Array2<f32> {
        assert_eq!(states.len(), xs.nrows(), "step_batch: one state per row");
        let xp = self.input_proj(xs);
        let n = self.hidden();
        let mut hs = Array2::zeros((xs.nrows(), n));
        for (mut row, s) in hs.rows_mut().into_iter().zip(states.iter()) {
            row.assign(&K::h(s));
        }
        let mut hp = self.w_hh.forward(hs.view());
        hp += &self.b_hh;
        for ((x, p), (s, mut y)) in xp
            .rows()
            .into_iter()
            .zip(hp.rows())
            .zip(states.iter_mut().zip(hs.rows_mut()))
        {
            K::update(x, p, s);
            y.assign(&K::h(s));
        }
        hs
    }
}
