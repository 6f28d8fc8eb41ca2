//! Sliding-window causal softmax attention (Longformer's causal local attention, Mistral's
//! sliding window; spec/mixers.md §15.1) with optional attention sinks (StreamingLLM, Xiao et al.
//! 2023; §15.2) and optional rotary position embeddings (RoPE).
//!
//! Per head, with window `W ≥ 1` (the current token included), `S ≥ 0` sinks and tokens counted
//! `j = 0, 1, …` from the state's start, query `t` attends to
//!
//! ```text
//! A_t = { j ≤ t : j < S  or  t − W < j }                 (the sinks and the window)
//! o_t = Σ_{j ∈ A_t} softmax_j( q̂_tᵀ k̂_j / √D ) v_j,     y = W_o [o_t per head]
//! ```
//!
//! # Positions
//! Keys are cached *before* rotation, and positions are assigned by cache slot, as StreamingLLM
//! does: when query `t` is computed the cache holds `A_t` in order, key `j` is rotated to its
//! rank in `A_t` (`0 … |A_t| − 1`) and the query to the last rank `|A_t| − 1`. So no position
//! exceeds `S + W − 1`. Spelled out:
//!
//! - while `t < S + W` the cache is every token so far, and every position is absolute;
//! - a window key `j > t − W` is at distance `t − j` from the query, as with absolute positions;
//! - a sink `j < S` that has left the window (`j ≤ t − W`) is at distance `S + W − 1 − j`: the
//!   query sits at position `S + W − 1` relative to the sinks once the window is full.
//!
//! RoPE scores depend only on the difference of the two positions, so with `S = 0` this is RoPE
//! at absolute positions (Mistral), and the parallel path uses absolute positions throughout:
//! window scores `R(t)q_t · R(j)k_j`, sink scores `R(min(t, S + W − 1))q_t · R(j)k_j`. The
//! rotation pairs channel `i` with `i + D/2` of each head (Llama/Mistral's `rotate_half`), with
//! `θ_i = base^{−2i/D}`; angles are formed in f64.
//!
//! # Paths
//! - recurrent: a ring buffer of the last `W` tokens' unrotated keys and values beside the `S`
//!   sinks' (state `(S + W)·2·H·D`, `O((S + W)·H·D)` per token);
//! - parallel: the masked `T × (cached + T)` score matrix of the whole call (band plus sinks);
//! - chunkwise: the parallel form on blocks of the band, each block against the carried cache
//!   (the last `W` keys and values and the sinks), `O((S + W + L)·H·D)` per token.
//!
//! `forward` runs the chunkwise path (64-token blocks) for more than one token: on a CPU it is
//! the fastest of the three; the recurrent path is the cache-slot reference (it re-rotates
//! every cached key each token, as StreamingLLM does).

use crate::error::Result;
use crate::mixer::random::Rng;
use crate::mixer::{by_chunks, check_arg, check_dims, MultiPath, Path, SequenceMixer};
use crate::ops::Linear;
use ndarray::{concatenate, s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};

/// The layer's window, sinks and rotation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowOptions {
    /// `W`: keys a query sees besides the sinks, the current token included (`W ≥ 1`).
    pub window: usize,
    /// `S`: the first tokens kept for every query (attention sinks; `0` for none).
    pub sinks: usize,
    /// RoPE's base (`10000.0` in most models), or `None` for no rotation.
    pub rope_base: Option<f64>,
}

/// Rotary position embeddings over heads of `D` channels, pairs `(i, i + D/2)`.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `θ_i = base^{−2i/D}`, `[D/2]`.
    pub inv_freq: Vec<f64>,
    /// `(cos, sin)` of `p·θ_i` for the cache positions `p < S + W`, `[S + W, D/2]` each.
    table: (Array2<f32>, Array2<f32>),
}

impl Rope {
    fn new(head_dim: usize, base: f64, positions: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| base.powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        let angle = |p: usize, i: usize| cos_sin(p as u64, inv_freq[i]);
        let cos = Array2::from_shape_fn((positions, half), |(p, i)| angle(p, i).0);
        let sin = Array2::from_shape_fn((positions, half), |(p, i)| angle(p, i).1);
        Rope {
            inv_freq,
            table: (cos, sin),
        }
    }

    /// Rotates every head of `row` (`[H·D]`) to position `pos`.
    fn rotate(&self, mut row: ArrayViewMut1<f32>, pos: u64, head_dim: usize) {
        let half = head_dim / 2;
        let (cos, sin) = &self.table;
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let (c, s) = match usize::try_from(pos) {
                Ok(p) if p < cos.nrows() => (cos[[p, i]], sin[[p, i]]),
                _ => cos_sin(pos, f),
            };
            for h in (0..row.len()).step_by(head_dim) {
                let (a, b) = (row[h + i], row[h + i + half]);
                row[h + i] = a * c - b * s;
                row[h + i + half] = b * c + a * s;
            }
        }
    }
}

/// `(cos, sin)` of the angle `pos·θ`, formed in f64.
fn cos_sin(pos: u64, theta: f64) -> (f32, f32) {
    let angle = (pos as f64 * theta).rem_euclid(std::f64::consts::TAU);
    (angle.cos() as f32, angle.sin() as f32)
}

/// `[q | k | v]` rows split into the three views of `hd` columns each.
fn split3(x: ArrayView2<f32>, hd: usize) -> (ArrayView2<f32>, ArrayView2<f32>, ArrayView2<f32>) {
    let (q, kv) = x.split_at(Axis(1), hd);
    let (k, v) = kv.split_at(Axis(1), hd);
    (q, k, v)
}

/// Softmax of `scores` in place (`−∞` entries get weight 0; at least one entry is finite).
fn softmax(mut scores: ArrayViewMut1<f32>) {
    let max = scores.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    scores.mapv_inplace(|v| (v - max).exp());
    let sum = scores.sum();
    scores /= sum;
}

/// State of a [`WindowAttention`] layer: the sinks' and the window's keys (unrotated) and
/// values, and the number of tokens seen.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowState {
    /// Keys of the first `S` tokens, `[S, H·D]` (rows past the tokens seen are zero).
    pub sink_keys: Array2<f32>,
    /// Values of the first `S` tokens, `[S, H·D]`.
    pub sink_values: Array2<f32>,
    /// Ring buffer of keys: token `j ≥ S` in row `(j − S) mod W`, `[W, H·D]`.
    pub keys: Array2<f32>,
    /// Ring buffer of values, `[W, H·D]`.
    pub values: Array2<f32>,
    /// Tokens seen: the index of the next token.
    pub position: u64,
}

impl WindowState {
    fn sinks(&self) -> usize {
        self.sink_keys.nrows()
    }

    fn window(&self) -> usize {
        self.keys.nrows()
    }

    /// Cached sinks and window tokens: `(n_s, n_w)`.
    fn filled(&self) -> (usize, usize) {
        let s = self.sinks() as u64;
        let n_s = self.position.min(s);
        let n_w = (self.position - n_s).min(self.window() as u64);
        (n_s as usize, n_w as usize)
    }

    /// Appends one token's key and value (the write pointer is `(position − S) mod W`).
    fn push(&mut self, k: ArrayView1<f32>, v: ArrayView1<f32>) {
        let s = self.sinks() as u64;
        let (keys, values, row) = if self.position < s {
            let row = self.position as usize;
            (&mut self.sink_keys, &mut self.sink_values, row)
        } else {
            let row = ((self.position - s) % self.window() as u64) as usize;
            (&mut self.keys, &mut self.values, row)
        };
        keys.row_mut(row).assign(&k);
        values.row_mut(row).assign(&v);
        self.position += 1;
    }

    /// The cache in token order (sinks, then the window oldest first): token indices, keys and
    /// values `[n_s + n_w, H·D]`.
    fn in_order(&self) -> (Vec<u64>, Array2<f32>, Array2<f32>) {
        let (n_s, n_w) = self.filled();
        let first = self.position - n_w as u64;
        let mut index: Vec<u64> = (0..n_s as u64).collect();
        index.extend(first..self.position);
        let s = self.sinks() as u64;
        let w = self.window() as u64;
        let rows: Vec<usize> = (first..self.position)
            .map(|j| ((j - s) % w) as usize)
            .collect();
        let keys = concatenate(
            Axis(0),
            &[
                self.sink_keys.slice(s![..n_s, ..]),
                self.keys.select(Axis(0), &rows).view(),
            ],
        )
        .expect("same width");
        let values = concatenate(
            Axis(0),
            &[
                self.sink_values.slice(s![..n_s, ..]),
                self.values.select(Axis(0), &rows).view(),
            ],
        )
        .expect("same width");
        (index, keys, values)
    }
}

/// A sliding-window attention layer with optional sinks and RoPE.
#[derive(Clone, Debug)]
pub struct WindowAttention {
    /// Heads `H`.
    pub heads: usize,
    /// Channels per head `D` (queries, keys and values).
    pub head_dim: usize,
    /// The window `W`.
    pub window: usize,
    /// The sinks `S`.
    pub sinks: usize,
    /// `W_q`, `[H·D, C]`.
    pub w_q: Linear,
    /// `W_k`, `[H·D, C]`.
    pub w_k: Linear,
    /// `W_v`, `[H·D, C]`.
    pub w_v: Linear,
    /// `W_o`, `[C, H·D]`.
    pub w_o: Linear,
    /// The rotation, if any.
    pub rope: Option<Rope>,
}

impl WindowAttention {
    /// A layer from its projections (`[out, in]`): `[W_q, W_k, W_v, W_o]`, `heads` heads and
    /// the options.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the argument: `heads` (0 or not a
    /// divisor of `W_q`'s rows), `window` (0), `rope_base` (not above 1, or an odd head size),
    /// or the first matrix whose shape disagrees with `W_q`.
    pub fn new(
        heads: usize,
        [w_q, w_k, w_v, w_o]: [Array2<f32>; 4],
        options: WindowOptions,
    ) -> Result<Self> {
        const L: &str = "WindowAttention";
        let (hd, c) = w_q.dim();
        check_arg(
            heads > 0 && hd > 0 && hd.is_multiple_of(heads),
            L,
            "heads",
            format!("a positive divisor of W_q's rows {hd}"),
            &[heads],
        )?;
        check_dims(
            L,
            &[
                ("W_k", w_k.dim(), (hd, c), "[H·D, C]"),
                ("W_v", w_v.dim(), (hd, c), "[H·D, C]"),
                ("W_o", w_o.dim(), (c, hd), "[C, H·D]"),
            ],
        )?;
        let (window, sinks) = (options.window, options.sinks);
        check_arg(window > 0, L, "window", "at least 1", &[window])?;
        let head_dim = hd / heads;
        let rope = match options.rope_base {
            Some(base) => {
                check_arg(
                    base > 1.0 && head_dim.is_multiple_of(2),
                    L,
                    "rope_base",
                    format!("a base above 1 (found {base}) and an even head size"),
                    &[head_dim],
                )?;
                Some(Rope::new(head_dim, base, sinks + window))
            }
            None => None,
        };
        Ok(WindowAttention {
            heads,
            head_dim,
            window,
            sinks,
            w_q: Linear::from(w_q),
            w_k: Linear::from(w_k),
            w_v: Linear::from(w_v),
            w_o: Linear::from(w_o),
            rope,
        })
    }

    /// Random projections of width `c` (variance `1/in`) from `seed`.
    ///
    /// # Errors
    /// As [`WindowAttention::new`] for `heads` and the options.
    pub fn random(
        c: usize,
        heads: usize,
        head_dim: usize,
        options: WindowOptions,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let hd = heads * head_dim;
        let mut m = |o: usize, i: usize| {
            let b = (3.0 / i as f32).sqrt();
            rng.matrix(o, i, -b, b)
        };
        let ws = [m(hd, c), m(hd, c), m(hd, c), m(c, hd)];
        WindowAttention::new(heads, ws, options)
    }

    /// Width `C`.
    pub fn width(&self) -> usize {
        self.w_q.dim().1
    }

    /// Rotates `row` to `pos` (nothing without RoPE).
    fn rotate(&self, row: ArrayViewMut1<f32>, pos: u64) {
        if let Some(rope) = &self.rope {
            rope.rotate(row, pos, self.head_dim);
        }
    }

    /// `(q / √D, k, v)` of the rows, unrotated.
    #[track_caller]
    fn project(&self, xs: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        assert_eq!(xs.ncols(), self.width(), "WindowAttention: width");
        let mut q = self.w_q.forward(xs);
        q *= (self.head_dim as f32).powf(-0.5);
        (q, self.w_k.forward(xs), self.w_v.forward(xs))
    }

    /// Recurrent path for one token's `(q, k, v)`: pushes `k, v` into the cache, then attends
    /// over the cache with every key at its cache position. Returns `o`, `[H·D]`.
    fn decode(
        &self,
        q: ArrayView1<f32>,
        k: ArrayView1<f32>,
        v: ArrayView1<f32>,
        state: &mut WindowState,
    ) -> Array1<f32> {
        state.push(k, v);
        let (_, mut keys, values) = state.in_order();
        for (p, row) in keys.rows_mut().into_iter().enumerate() {
            self.rotate(row, p as u64);
        }
        let mut q = q.to_owned();
        self.rotate(q.view_mut(), keys.nrows() as u64 - 1);
        let d = self.head_dim;
        let mut o = Array1::zeros(q.len());
        for h in 0..self.heads {
            let cols = s![.., h * d..(h + 1) * d];
            let mut p = keys.slice(cols).dot(&q.slice(s![h * d..(h + 1) * d]));
            softmax(p.view_mut());
            o.slice_mut(s![h * d..(h + 1) * d])
                .assign(&values.slice(cols).t().dot(&p));
        }
        o
    }

    /// Parallel path for a call's `(q, k, v)`: the masked score matrix against the carried
    /// cache and the call's keys (absolute positions, see the module docs). Returns `[T, H·D]`.
    fn parallel(
        &self,
        q: ArrayView2<f32>,
        k: ArrayView2<f32>,
        v: ArrayView2<f32>,
        state: &mut WindowState,
    ) -> Array2<f32> {
        let t_len = q.nrows();
        let n0 = state.position;
        let (mut index, cached_k, cached_v) = state.in_order();
        index.extend(n0..n0 + t_len as u64);
        let mut keys = concatenate(Axis(0), &[cached_k.view(), k]).expect("same width");
        let values = concatenate(Axis(0), &[cached_v.view(), v]).expect("same width");
        for (row, &j) in keys.rows_mut().into_iter().zip(&index) {
            self.rotate(row, j);
        }
        let (s_len, w) = (self.sinks as u64, self.window as u64);
        // Queries against window keys at their own position; against sinks that left the
        // window at S + W − 1 (both as absolute positions, see the module docs). Without RoPE
        // or sinks the two are the same.
        let mut q_win = q.to_owned();
        for (i, row) in q_win.rows_mut().into_iter().enumerate() {
            self.rotate(row, n0 + i as u64);
        }
        let q_sink = (self.rope.is_some() && s_len > 0).then(|| {
            let mut q_sink = q.to_owned();
            for (i, row) in q_sink.rows_mut().into_iter().enumerate() {
                self.rotate(row, (n0 + i as u64).min(s_len + w - 1));
            }
            q_sink
        });
        // Keys with j < S come first in `index`.
        let n_sink = index.iter().take_while(|&&j| j < s_len).count();
        let d = self.head_dim;
        let mut out = Array2::zeros(q.raw_dim());
        for h in 0..self.heads {
            let cols = s![.., h * d..(h + 1) * d];
            let k_h = keys.slice(cols);
            let mut scores = q_win.slice(cols).dot(&k_h.t());
            let sink_scores = q_sink
                .as_ref()
                .map(|q| q.slice(cols).dot(&k_h.slice(s![..n_sink, ..]).t()));
            for (i, mut row) in scores.rows_mut().into_iter().enumerate() {
                let t = n0 + i as u64;
                for (r, (score, &j)) in row.iter_mut().zip(&index).enumerate() {
                    if j > t {
                        *score = f32::NEG_INFINITY;
                    } else if j + w <= t {
                        *score = match &sink_scores {
                            _ if j >= s_len => f32::NEG_INFINITY,
                            Some(sink) => sink[[i, r]],
                            None => *score,
                        };
                    }
                }
                softmax(row);
            }
            out.slice_mut(cols).assign(&scores.dot(&values.slice(cols)));
        }
        for (k, v) in k.rows().into_iter().zip(v.rows()) {
            state.push(k, v);
        }
        out
    }

    /// Raw attention output `o` (before `W_o`) of the rows on `path`, advancing the state.
    ///
    /// # Shapes
    /// `xs: [T, C]` → `[T, H·D]`.
    ///
    /// # Panics
    /// If `C` is not the layer's width, or for `Path::Chunkwise(0)`.
    pub fn attend(&self, xs: ArrayView2<f32>, state: &mut WindowState, path: Path) -> Array2<f32> {
        let (q, k, v) = self.project(xs);
        let qkv = concatenate(Axis(1), &[q.view(), k.view(), v.view()]).expect("same rows");
        let hd = q.ncols();
        let parallel = |x: ArrayView2<f32>, st: &mut WindowState| {
            let (q, k, v) = split3(x, hd);
            self.parallel(q, k, v, st)
        };
        match path {
            Path::Parallel => parallel(qkv.view(), state),
            Path::Chunkwise(n) => by_chunks(qkv.view(), state, n, hd, parallel),
            Path::Recurrent => by_chunks(qkv.view(), state, 1, hd, |x, st| {
                let (q, k, v) = split3(x, hd);
                self.decode(q.row(0), k.row(0), v.row(0), st)
                    .insert_axis(Axis(0))
            }),
        }
    }
}

impl SequenceMixer for WindowAttention {
    type State = WindowState;

    fn init_state(&self) -> WindowState {
        let hd = self.heads * self.head_dim;
        WindowState {
            sink_keys: Array2::zeros((self.sinks, hd)),
            sink_values: Array2::zeros((self.sinks, hd)),
            keys: Array2::zeros((self.window, hd)),
            values: Array2::zeros((self.window, hd)),
            position: 0,
        }
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut WindowState) -> Array2<f32> {
        let path = if xs.nrows() <= 1 {
            Path::Recurrent
        } else {
            Path::Chunkwise(64)
        };
        self.forward_path(xs, state, path)
    }

    /// Projects the batch's rows once, then each row attends over its own cache.
    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut WindowState]) -> Array2<f32> {
        assert_eq!(states.len(), xs.nrows(), "step_batch: one state per row");
        let (q, k, v) = self.project(xs);
        let mut o = Array2::zeros(q.raw_dim());
        for (b, st) in states.iter_mut().enumerate() {
            o.row_mut(b)
                .assign(&self.decode(q.row(b), k.row(b), v.row(b), st));
        }
        self.w_o.forward(o.view())
    }
}

impl MultiPath for WindowAttention {
    fn forward_path(
        &self,
        xs: ArrayView2<f32>,
        state: &mut WindowState,
        path: Path,
    ) -> Array2<f32> {
        let o = self.attend(xs, state, path);
        self.w_o.forward(o.view())
    }
}
