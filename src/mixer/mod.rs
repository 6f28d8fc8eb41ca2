//! Sequence mixers: layers that carry state from token to token.
//!
//! Every mixer has a recurrent path ([`SequenceMixer::step`], O(1) work and a fixed-size state
//! per token) and a sequence path ([`SequenceMixer::forward`], all `T` rows at once) that leaves
//! the state exactly as `T` calls of `step` would. Tests pin the paths to each other.

pub mod rwkv4;
pub mod rwkv5;
pub mod rwkv6;
pub mod wkv;

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
    /// `xs: [T, C]` → `[T, C]` (`T = 0` is allowed and changes nothing).
    ///
    /// # Panics
    /// If `C` is not the layer's width.
    fn forward(&self, xs: ArrayView2<f32>, state: &mut Self::State) -> Array2<f32>;

    /// Recurrent path: one token, O(1) in the number of tokens seen.
    ///
    /// # Shapes
    /// `x: [C]` → `[C]`.
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
    /// `xs: [B, C]` → `[B, C]`.
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
        let mut out = Array2::zeros(xs.raw_dim());
        for (mut o, r) in out.rows_mut().into_iter().zip(rows) {
            o.assign(&r);
        }
        out
    }
}
