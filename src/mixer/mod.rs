//! Sequence mixers: layers that carry state from token to token.
//!
//! Every mixer has a recurrent path ([`SequenceMixer::step`], O(1) work and a fixed-size state
//! per token) and a sequence path ([`SequenceMixer::forward`], all `T` rows at once) that leaves
//! the state exactly as `T` calls of `step` would. Tests pin the paths to each other.
//!
//! Mixers with more than one sequence algorithm (the recurrence, a masked quadratic "parallel"
//! form, a chunkwise form) also implement [`MultiPath`], which runs any of them by name;
//! `forward` picks the fastest. The folders keep the shared kernels ([`kernels`]), the RWKV
//! time mixes ([`rwkv`]) and the rest of the family ([`family`]) apart. The family
//! (spec/mixers.md):
//!
//! | module | mixer | kernel |
//! |---|---|---|
//! | [`linear_attention`] | Katharopoulos linear attention, Performer FAVOR+ | [`outer_product`], no gate, normaliser |
//! | [`retention`] | RetNet multi-scale retention (+ xPos as a decay) | [`outer_product`], per-head (per-key) gate |
//! | [`gla`] | gated linear attention | [`outer_product`], per-key per-token gate |
//! | [`rwkv5`], [`rwkv6`] | RWKV-5/6 time mix | [`outer_product`], exclusive read-out + bonus |
//! | [`rwkv7`] | RWKV-7 time mix | [`wkv7`], diagonal plus rank one (scan, chunkwise WY form) |
//! | [`rwkv4`], [`aft`] | RWKV-4 WKV, AFT-simple, AFT-full, AFT-local | per-channel log-sum-exp ([`rwkv4::wkv4_scan`], [`rwkv4::wkv4_chunkwise`]) |
//! | [`mamba`] | Mamba-1 selective scan (S6) block | its own scan: gate per channel and state index (recurrent, chunkwise) |
//! | [`mamba2`] | Mamba-2 SSD block | [`outer_product`], per-head per-token gate |
//! | [`s4d`] | S4D diagonal state space (complex or real, ZOH) | [`lti`]: recurrence, Vandermonde kernel convolution (direct / FFT), chunkwise |
//! | [`lmu`] | Legendre Memory Unit (feedforward) | [`lti::LtiMemory`]: recurrence, impulse-response convolution (direct / FFT), chunkwise |
//! | [`hippo`] | HiPPO-LegT (LTI window), HiPPO-LegS (time-varying, recurrent only) | [`lti::LtiMemory`] (LegT); bilinear triangular step (LegS) |
//! | [`rnn`] | LSTM, GRU (PyTorch's weights) | none: the gates depend nonlinearly on `h_{t−1}` (recurrent only, `[T, I]` → `[T, H]`) |
//! | [`min_rnn`] | minGRU, minLSTM | its own diagonal scan `h_t = a_t h_{t−1} + b_t`: recurrence, log-space (Heinsen) scan, chunkwise (`[T, I]` → `[T, H]`) |
//! | [`short_conv`] | short causal depthwise convolution | [`crate::ops::shift::causal_conv`] |
//! | [`window_attention`] | sliding-window softmax attention, attention sinks, rotary positions by cache slot | ring-buffer cache (recurrent), banded key sets (parallel, chunkwise) |

pub mod family;
pub mod kernels;
pub(crate) mod random;
pub mod rwkv;

// Every mixer module is also reachable one level up (`mixer::rwkv6`, `mixer::gla`, ...).
pub use family::{
    aft, gla, hippo, linear_attention, lmu, mamba, mamba2, min_rnn, retention, rnn, s4d,
    short_conv, window_attention,
};
pub use kernels::{lti, outer_product, wkv, wkv7};
pub(crate) use rwkv::from_arrays;
pub use rwkv::{rwkv4, rwkv5, rwkv6, rwkv7};

use crate::error::{Error, Result};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

/// A causal layer with a recurrent and a sequence path.
pub trait SequenceMixer: Send + Sync {
    /// Everything carried from one token to the next.
    type State: Clone + Send;

    /// The state before the first token.
    fn init_state(&self) -> Self::State;

    /// Sequence path: all rows of `xs` at once; leaves `state` as `T` calls of `step` would.
    ///
    /// # Shapes
    /// `xs: [T, C]` → `[T, C']` (`T = 0` is allowed and changes nothing). `C'`, the output
    /// width, is `C` for every mixer but the recurrent networks (`rnn`, `min_rnn`), which map
    /// an input width to their hidden width.
    ///
    /// # Panics
    /// If `C` is not the layer's width.
    fn forward(&self, xs: ArrayView2<f32>, state: &mut Self::State) -> Array2<f32>;

    /// Recurrent path: one token, O(1) in the number of tokens seen.
    ///
    /// # Shapes
    /// `x: [C]` → `[C']`.
    ///
    /// # Panics
    /// If `C` is not the layer's width.
    fn step(&self, x: ArrayView1<f32>, state: &mut Self::State) -> Array1<f32> {
        self.forward(x.insert_axis(Axis(0)), state)
            .index_axis_move(Axis(0), 0)
    }

    /// Batched recurrent path: row `b` of `xs` is the next token of the sequence whose state is
    /// `states[b]`. Mixers with weights read them once for the whole batch.
    ///
    /// # Shapes
    /// `xs: [B, C]` → `[B, C']`.
    ///
    /// # Panics
    /// If `states.len() != B` or `C` is not the layer's width.
    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut Self::State]) -> Array2<f32> {
        assert_eq!(states.len(), xs.nrows(), "step_batch: one state per row");
        let rows: Vec<Array1<f32>> = xs
            .rows()
            .into_iter()
            .zip(states.iter_mut())
            .map(|(x, s)| self.step(x, s))
            .collect();
        let width = rows.first().map_or(xs.ncols(), Array1::len);
        let mut out = Array2::zeros((xs.nrows(), width));
        for (mut o, r) in out.rows_mut().into_iter().zip(rows) {
            o.assign(&r);
        }
        out
    }
}

/// A sequence algorithm of a [`MultiPath`] mixer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Token by token, `O(1)` state work per token.
    Recurrent,
    /// The masked quadratic form over the whole call (`O(T²)`).
    Parallel,
    /// The quadratic form inside chunks of this many tokens (the last chunk may be shorter),
    /// the state carried between them.
    Chunkwise(usize),
}

/// A mixer whose sequence path can be run by any of its algorithms. Every path leaves the same
/// state and gives the same output (up to rounding); tests pin them together.
pub trait MultiPath: SequenceMixer {
    /// Runs `xs` through `path`.
    ///
    /// # Shapes
    /// `xs: [T, C]` → `[T, C]`.
    ///
    /// # Panics
    /// If `C` is not the layer's width, or for `Path::Chunkwise(0)`.
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut Self::State, path: Path)
        -> Array2<f32>;
}

/// Runs `run` over chunks of `chunk` rows of `xs`, carrying the state, and stacks the outputs:
/// the chunkwise form of any mixer whose parallel form starts from a carried state.
///
/// # Panics
/// If `chunk` is 0.
#[track_caller]
pub fn by_chunks<S>(
    xs: ArrayView2<f32>,
    state: &mut S,
    chunk: usize,
    width: usize,
    mut run: impl FnMut(ArrayView2<f32>, &mut S) -> Array2<f32>,
) -> Array2<f32> {
    assert!(chunk > 0, "chunk must be positive");
    let mut out = Array2::zeros((xs.nrows(), width));
    for (i, part) in xs.axis_chunks_iter(Axis(0), chunk).enumerate() {
        let y = run(part, state);
        out.slice_mut(ndarray::s![i * chunk..i * chunk + part.nrows(), ..])
            .assign(&y);
    }
    out
}

/// One shape check: matrix name, found dims, expected dims, expected shape written out.
pub(crate) type DimCheck<'a> = (&'a str, (usize, usize), (usize, usize), &'a str);

/// Checks a layer's matrix shapes.
///
/// # Errors
/// [`Error::InputShape`] for the first mismatch, naming the layer, the matrix and the shape it
/// must have.
pub(crate) fn check_dims(layer: &str, checks: &[DimCheck]) -> Result<()> {
    for &(name, found, (rows, cols), shape) in checks {
        if found != (rows, cols) {
            return Err(Error::InputShape {
                what: format!("{layer}: {name}"),
                expected: format!("{shape} = [{rows}, {cols}]"),
                found: vec![found.0, found.1],
            });
        }
    }
    Ok(())
}

/// `Ok` if `holds`, else [`Error::InputShape`] for the argument `what` of `layer`.
pub(crate) fn check_arg(
    holds: bool,
    layer: &str,
    what: &str,
    expected: impl std::fmt::Display,
    found: &[usize],
) -> Result<()> {
    if holds {
        Ok(())
    } else {
        Err(Error::InputShape {
            what: format!("{layer}: {what}"),
            expected: expected.to_string(),
            found: found.to_vec(),
        })
    }
}
