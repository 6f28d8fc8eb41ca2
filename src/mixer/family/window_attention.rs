//! Sliding-window softmax attention (Longformer's causal local attention, Mistral's sliding
//! window) with optional attention sinks (StreamingLLM) and rotary position embeddings
//! (spec/mixers.md §15).
//!
//! Token `t` attends to the keys it keeps: the window, the last `W` tokens including itself
//! (`t − W < j ≤ t`), and the sinks, the first `S` tokens (`j < S`), each once:
//!
//! ```text
//! kept(t) = { j ≤ t : j < S  or  t − W < j }
//! o_t = W_o · concat_h softmax_{j ∈ kept(t)}( ⟨R(p_t) q_t, R(p_j) k_j⟩ / √D ) v_j
//! ```
//!
//! Positions are assigned by cache slot, as StreamingLLM does: the kept keys, in token order,
//! take positions `0, 1, …, |kept(t)| − 1` and the query the last one. Without sinks this
//! changes nothing (rotary scores depend only on `p_t − p_j = t − j`); with sinks, once the
//! window has moved past them, a sink sits `S + W − 1 − j` positions before the query rather
//! than `t − j`. Keys are cached before rotation. Rotary embeddings rotate channel pairs
//! `(x_i, x_{i + D/2})` of each head by `p · θ^{−2i/D}` (the GPT-NeoX / Llama layout).
//!
//! State: the first `S` tokens' keys and values and a ring buffer of the last `W` tokens', so
//! `O(S + W)` per layer and `O((S + W)·D)` work per token per head. Paths: the recurrence
//! (one token at a time through the cache), the parallel form (every token of a call against
//! the banded set of keys it keeps, carried cache included) and the chunkwise form (the
//! parallel form over blocks, carrying the cache between them).

use crate::error::Result;
use crate::mixer::random::Rng;
use crate::mixer::{by_chunks, check_arg, check_dims, MultiPath, Path, SequenceMixer};
use crate::ops::Linear;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1};

/// Sliding-window softmax attention with optional sinks and rotary embeddings.
#[derive(Clone, Debug)]
pub struct WindowAttention {
    heads: usize,
    head_dim: usize,
    window: usize,
    sinks: usize,
    rope_base: Option<f32>,
    /// `cos` and `sin` of `p · θ_i` for every cache position `p < S + W` (rows) and pair `i`
    /// (columns), when rotary embeddings are on.
    rope: Option<(Array2<f32>, Array2<f32>)>,
    w_q: Linear,
    w_k: Linear,
    w_v: Linear,
    w_o: Linear,
}

/// The cache of a [`WindowAttention`]: the sinks' and the window's keys (before rotation) and
/// values, and how many tokens it has seen.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowState {
    /// Keys of the first `S` tokens, `[S, H·D]` (the first `min(t, S)` rows written).
    pub sink_k: Array2<f32>,
    /// Values of the first `S` tokens, `[S, H·D]`.
    pub sink_v: Array2<f32>,
    /// Keys of the last `W` tokens, `[W, H·D]`: token `j` in row `j mod W`.
    pub ring_k: Array2<f32>,
    /// Values of the last `W` tokens, `[W, H·D]`.
    pub ring_v: Array2<f32>,
    /// Tokens seen so far.
    pub seen: usize,
}

impl WindowState {
    /// The key and value row of token `j`, which must be kept at time `seen − 1` or later.
    fn kv(&self, j: usize, sinks: usize) -> (ArrayView1<'_, f32>, ArrayView1<'_, f32>) {
        let w = self.ring_k.nrows();
        if j + w >= self.seen {
            (self.ring_k.row(j % w), self.ring_v.row(j % w))
        } else {
            debug_assert!(j < sinks);
            (self.sink_k.row(j), self.sink_v.row(j))
        }
    }

    /// Records token `j = seen`'s key and value.
    fn push(&mut self, k: ArrayView1<f32>, v: ArrayView1<f32>) {
        let j = self.seen;
        if j < self.sink_k.nrows() {
            self.sink_k.row_mut(j).assign(&k);
            self.sink_v.row_mut(j).assign(&v);
        }
        let w = self.ring_k.nrows();
        self.ring_k.row_mut(j % w).assign(&k);
        self.ring_v.row_mut(j % w).assign(&v);
        self.seen += 1;
    }
}

/// The tokens `t` keeps, in order: the sinks before its window, then its window.
fn kept(t: usize, window: usize, sinks: usize) -> impl Iterator<Item = usize> {
    let start = (t + 1).saturating_sub(window);
    (0..sinks.min(start)).chain(start..=t)
}

/// `cos` and `sin` of `p · θ_i`, `θ_i = base^{−2i/D}`, for positions `p < positions` and the
/// `D/2` pairs of a head.
fn rope_table(positions: usize, head_dim: usize, base: f32) -> (Array2<f32>, Array2<f32>) {
    let half = head_dim / 2;
    let theta =
        |p: usize, i: usize| (p as f64) * f64::from(base).powf(-2.0 * i as f64 / head_dim as f64);
    (
        Array2::from_shape_fn((positions, half), |(p, i)| theta(p, i).cos() as f32),
        Array2::from_shape_fn((positions, half), |(p, i)| theta(p, i).sin() as f32),
    )
}

/// Rotates each head's channel pairs `(x_i, x_{i + D/2})` of `x` (`[H·D]`) by the angles whose
/// cosines and sines are `cos`, `sin` (`[D/2]`), in place.
fn rotate(mut x: ArrayViewMut1<f32>, cos: ArrayView1<f32>, sin: ArrayView1<f32>) {
    let half = cos.len();
    for mut head in x.exact_chunks_mut(2 * half) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos[i] - b * sin[i];
            head[i + half] = a * sin[i] + b * cos[i];
        }
    }
}

impl WindowAttention {
    /// A layer of `heads` heads of `head_dim` channels attending to a window of `window`
    /// tokens (the current one included) and the first `sinks` tokens, from its projections
    /// `W_q`, `W_k`, `W_v` (`[H·D, C]`) and `W_o` (`[C, H·D]`); rotary embeddings with base
    /// `rope_base` (e.g. 10000) if given.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the argument: a window of 0, an
    /// odd head size with rotary embeddings, a projection of the wrong shape.
    pub fn new(
        heads: usize,
        head_dim: usize,
        window: usize,
        sinks: usize,
        rope_base: Option<f32>,
        [w_q, w_k, w_v, w_o]: [Array2<f32>; 4],
    ) -> Result<Self> {
        let layer = "WindowAttention";
        check_arg(window > 0, layer, "window", "at least 1", &[window])?;
        check_arg(
            heads > 0 && head_dim > 0,
            layer,
            "heads, head_dim",
            "positive",
            &[heads, head_dim],
        )?;
        if let Some(base) = rope_base {
            check_arg(
                head_dim.is_multiple_of(2),
                layer,
                "head_dim",
                "even (rotary pairs)",
                &[head_dim],
            )?;
            check_arg(base > 1.0, layer, "rope_base", "above 1", &[])?;
        }
        let (c, hd) = (w_q.ncols(), heads * head_dim);
        check_dims(
            layer,
            &[
                ("W_q", w_q.dim(), (hd, c), "[H·D, C]"),
                ("W_k", w_k.dim(), (hd, c), "[H·D, C]"),
                ("W_v", w_v.dim(), (hd, c), "[H·D, C]"),
                ("W_o", w_o.dim(), (c, hd), "[C, H·D]"),
            ],
        )?;
        Ok(WindowAttention {
            heads,
            head_dim,
            window,
            sinks,
            rope_base,
            rope: rope_base.map(|base| rope_table(sinks + window, head_dim, base)),
            w_q: Linear::from(w_q),
            w_k: Linear::from(w_k),
            w_v: Linear::from(w_v),
            w_o: Linear::from(w_o),
        })
    }

    /// A layer of width `c` with random projections from `seed` (variance `1/in`) and rotary
    /// embeddings of base 10000.
    ///
    /// # Errors
    /// As [`WindowAttention::new`].
    pub fn random(
        c: usize,
        heads: usize,
        head_dim: usize,
        window: usize,
        sinks: usize,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let hd = heads * head_dim;
        let (b_in, b_out) = ((3.0 / c as f32).sqrt(), (3.0 / hd.max(1) as f32).sqrt());
        let ws = [
            rng.matrix(hd, c, -b_in, b_in),
            rng.matrix(hd, c, -b_in, b_in),
            rng.matrix(hd, c, -b_in, b_in),
            rng.matrix(c, hd, -b_out, b_out),
        ];
        WindowAttention::new(heads, head_dim, window, sinks, Some(10000.0), ws)
    }

    /// The window `W` (tokens, the current one included).
    pub fn window(&self) -> usize {
        self.window
    }

    /// The rotary embeddings' base `θ`, if they are on.
    pub fn rope_base(&self) -> Option<f32> {
        self.rope_base
    }

    /// The number of sink tokens `S`.
    pub fn sinks(&self) -> usize {
        self.sinks
    }

    /// The width `C`.
    pub fn width(&self) -> usize {
        self.w_q.dim().1
    }

    /// Attention output (`[H·D]`, before `W_o`) of token `t`, whose query `q` is not yet
    /// rotated, over the keys `key(j)` (not rotated) and values of `kept(t)`.
    fn attend<'a>(
        &self,
        t: usize,
        q: ArrayView1<f32>,
        key: impl Fn(usize) -> (ArrayView1<'a, f32>, ArrayView1<'a, f32>),
        mut out: ArrayViewMut1<f32>,
    ) {
        let d = self.head_dim;
        let order: Vec<usize> = kept(t, self.window, self.sinks).collect();
        let mut q = q.to_owned();
        let mut keys = Array2::zeros((order.len(), q.len()));
        for (p, (&j, mut row)) in order.iter().zip(keys.rows_mut()).enumerate() {
            row.assign(&key(j).0);
            if let Some((cos, sin)) = &self.rope {
                rotate(row, cos.row(p), sin.row(p));
            }
        }
        if let Some((cos, sin)) = &self.rope {
            let p = order.len() - 1;
            rotate(q.view_mut(), cos.row(p), sin.row(p));
        }
        let scale = 1.0 / (d as f32).sqrt();
        out.fill(0.0);
        let mut scores = vec![0.0f32; order.len()];
        for h in 0..self.heads {
            let cols = s![h * d..(h + 1) * d];
            let qh = q.slice(cols);
            for (sc, k) in scores.iter_mut().zip(keys.rows()) {
                *sc = qh.dot(&k.slice(cols)) * scale;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0.0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let mut oh = out.slice_mut(cols);
            for (&w, &j) in scores.iter().zip(&order) {
                oh.scaled_add(w / sum, &key(j).1.slice(cols));
            }
        }
    }

    /// The parallel form: every row of `xs` against the banded set of keys it keeps (the
    /// carried cache's and this call's), then the cache advanced past the call.
    fn parallel(&self, xs: ArrayView2<f32>, state: &mut WindowState) -> Array2<f32> {
        let (q, k, v) = (
            self.w_q.forward(xs),
            self.w_k.forward(xs),
            self.w_v.forward(xs),
        );
        let t0 = state.seen;
        let mut o = Array2::zeros(q.raw_dim());
        {
            let cache = &*state;
            let key = |j: usize| {
                if j >= t0 {
                    (k.row(j - t0), v.row(j - t0))
                } else {
                    cache.kv(j, self.sinks)
                }
            };
            for (i, row) in o.rows_mut().into_iter().enumerate() {
                self.attend(t0 + i, q.row(i), key, row);
            }
        }
        for (k, v) in k.rows().into_iter().zip(v.rows()) {
            state.push(k, v);
        }
        self.w_o.forward(o.view())
    }

    /// The recurrence: one token through the cache.
    fn recurrent_step(&self, x: ArrayView1<f32>, state: &mut WindowState) -> Array1<f32> {
        let xs = x.insert_axis(ndarray::Axis(0));
        let (q, k, v) = (
            self.w_q.forward(xs),
            self.w_k.forward(xs),
            self.w_v.forward(xs),
        );
        state.push(k.row(0), v.row(0));
        let t = state.seen - 1;
        let mut o = Array1::zeros(q.ncols());
        let cache = &*state;
        self.attend(t, q.row(0), |j| cache.kv(j, self.sinks), o.view_mut());
        self.w_o
            .forward(o.view().insert_axis(ndarray::Axis(0)))
            .row(0)
            .to_owned()
    }
}

impl SequenceMixer for WindowAttention {
    type State = WindowState;

    fn init_state(&self) -> WindowState {
        let hd = self.heads * self.head_dim;
        WindowState {
            sink_k: Array2::zeros((self.sinks, hd)),
            sink_v: Array2::zeros((self.sinks, hd)),
            ring_k: Array2::zeros((self.window, hd)),
            ring_v: Array2::zeros((self.window, hd)),
            seen: 0,
        }
    }

    /// The chunkwise form with chunks of the window's length.
    fn forward(&self, xs: ArrayView2<f32>, state: &mut WindowState) -> Array2<f32> {
        self.forward_path(xs, state, Path::Chunkwise(self.window.max(16)))
    }

    fn step(&self, x: ArrayView1<f32>, state: &mut WindowState) -> Array1<f32> {
        assert_eq!(x.len(), self.width(), "WindowAttention: width");
        self.recurrent_step(x, state)
    }
}

impl MultiPath for WindowAttention {
    fn forward_path(
        &self,
        xs: ArrayView2<f32>,
        state: &mut WindowState,
        path: Path,
    ) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.width(), "WindowAttention: width");
        match path {
            Path::Recurrent => {
                let mut out = Array2::zeros((xs.nrows(), self.width()));
                for (x, mut row) in xs.rows().into_iter().zip(out.rows_mut()) {
                    row.assign(&self.recurrent_step(x, state));
                }
                out
            }
            Path::Parallel => self.parallel(xs, state),
            Path::Chunkwise(c) => by_chunks(xs, state, c, self.width(), |part, st| {
                self.parallel(part, st)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_tokens_are_the_sinks_before_the_window_then_the_window() {
        assert_eq!(kept(0, 3, 2).collect::<Vec<_>>(), [0]);
        assert_eq!(kept(3, 3, 2).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(kept(9, 3, 2).collect::<Vec<_>>(), [0, 1, 7, 8, 9]);
        assert_eq!(kept(9, 3, 0).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(kept(2, 5, 4).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
