//! The decayed outer-product kernel shared by linear attention, Performer, RetNet, GLA and
//! RWKV-5/6 (spec/mixers.md §1.1, §7.3), with its three paths.
//!
//! Per head `h`, with a state `S ∈ R^{K×V}` indexed `[key, value]` and a log-gate `λ_t ≤ 0`
//! (`G_t = e^{λ_t} 1ᵀ`, a decay along the key index):
//!
//! ```text
//! S_t = diag(e^{λ_t}) S_{t−1} + k_t v_tᵀ
//! o_t = S_tᵀ q_t                                          (inclusive read-out)
//! o_t = S_{t−1}ᵀ q_t + (q_tᵀ diag(u) k_t) v_t             (exclusive read-out plus bonus u, RWKV)
//! ```
//!
//! With the optional normaliser state `z_t = diag(e^{λ_t}) z_{t−1} + k_t` (linear attention,
//! Performer) the read-out is divided by the same expression with `v → 1`:
//! `o_t / (q_tᵀ z_t + ε)` (inclusive) or `o_t / (q_tᵀ (z_{t−1} + u ⊙ k_t) + ε)` (exclusive).
//!
//! The gate comes in four shapes ([`Gate`]): none (`λ = 0`), one constant per head (RetNet),
//! one constant per key channel (RWKV-5, RetNet with xPos) or one per key channel and token
//! (GLA, RWKV-6).
//!
//! # The three paths
//!
//! - [`recurrent`]: the definition above, token by token; `O(K·V)` per token and head.
//! - [`parallel`]: the masked quadratic form over the whole sequence,
//!   `O = ((Q ⊙ e^{L_q}) S_0) + (P ⊙ M) V` with `P_{ts} = Σ_i q_{t,i} k_{s,i} e^{L_{q,t,i} − L_{s,i}}`,
//!   `L_t = Σ_{r≤t} λ_r`, `L_q = L` (inclusive) or `L_q = L − λ` (exclusive, which also masks the
//!   diagonal and adds the bonus there); `O(T²)`.
//! - [`chunkwise`]: the same form inside chunks of `C` tokens (the last chunk may be shorter),
//!   with the state carried between chunks (spec/mixers.md §7.3):
//!
//! ```text
//! inter:  o_t  = Sᵀ (q_t ⊙ e^{L_{q,t}})                    L relative to the chunk's start
//! intra:  o_t += Σ_{s in chunk, s ≤ t (s < t)} P_{ts} v_s  (+ the bonus term)
//! state:  S    = diag(e^{L_end}) S + Σ_s (k_s ⊙ e^{L_end − L_s}) v_sᵀ
//! ```
//!
//! Every exponent above is a sum of log-gates over a stretch of tokens, so it is `≤ 0`: no
//! positive exponent is ever formed, and arbitrarily strong data-dependent decays cannot
//! overflow (they underflow to the exact limit 0, subnormals flushed). The factors are evaluated
//! as products of the gates `e^{λ_r}` over exactly that stretch: `e^{L_{q,t}}` as a running
//! product forward through the chunk, `e^{L_end − L_s}` backward from its end, and the pairwise
//! `e^{L_{q,t} − L_s}` backward from `t` (one multiply per pair and key channel, no exponential
//! and no ratio of cumulative products, so there is no cancellation either: the same products
//! the recurrence forms). Constant gates use a table of powers. The inter-chunk and state terms
//! and `P V` are matrix products; `P` itself is a matrix product for the gate-free and per-head
//! gates.

use crate::ops::PARALLEL_MIN_WORK;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

/// The gate `G_t = e^{λ_t}` in log space (`λ ≤ 0`; `−∞` is a gate of exactly 0), broadcast over
/// the value index.
#[derive(Clone, Copy, Debug)]
pub enum Gate<'a> {
    /// No decay (`λ = 0`): linear attention, Performer, AFT-like sums.
    None,
    /// One constant log-decay per head, `[H]` (RetNet: `log γ_h`).
    Head(ArrayView1<'a, f32>),
    /// One constant log-decay per key channel, `[H·K]` (RWKV-5 `−exp(time_decay)`, RetNet with
    /// xPos).
    Key(ArrayView1<'a, f32>),
    /// One log-decay per key channel and token, `[T, H·K]` (GLA, RWKV-6).
    KeyToken(ArrayView2<'a, f32>),
    /// As [`Gate::Key`], given as the decay `e^{λ} ∈ [0, 1]` itself (RWKV-5's `w`): the kernel
    /// only ever multiplies by decays, so a caller that has them saves the exponentials.
    KeyDecay(ArrayView1<'a, f32>),
    /// As [`Gate::KeyToken`], given as the decay `e^{λ} ∈ [0, 1]` itself (RWKV-6's `w_t`).
    KeyTokenDecay(ArrayView2<'a, f32>),
}

impl Gate<'_> {
    /// The same gate borrowing for a shorter lifetime (ndarray views are invariant).
    pub fn reborrow(&self) -> Gate<'_> {
        match self {
            Gate::None => Gate::None,
            Gate::Head(g) => Gate::Head(g.view()),
            Gate::Key(g) => Gate::Key(g.view()),
            Gate::KeyToken(g) => Gate::KeyToken(g.view()),
            Gate::KeyDecay(g) => Gate::KeyDecay(g.view()),
            Gate::KeyTokenDecay(g) => Gate::KeyTokenDecay(g.view()),
        }
    }
}

/// How the output reads the state.
#[derive(Clone, Copy, Debug)]
pub enum ReadOut<'a> {
    /// `o_t = S_tᵀ q_t`: the current token is in the state it reads.
    Inclusive,
    /// `o_t = S_{t−1}ᵀ q_t + (q_tᵀ diag(u) k_t) v_t` with the bonus `u: [H·K]` (RWKV-4/5/6).
    Bonus(ArrayView1<'a, f32>),
}

impl ReadOut<'_> {
    /// The same read-out borrowing for a shorter lifetime.
    pub fn reborrow(&self) -> ReadOut<'_> {
        match self {
            ReadOut::Inclusive => ReadOut::Inclusive,
            ReadOut::Bonus(u) => ReadOut::Bonus(u.view()),
        }
    }
}

/// One call's inputs.
///
/// # Shapes
/// `q, k: [T, H·K]`, `v: [T, H·V]` (heads side by side in each row); the gate and bonus as
/// documented on [`Gate`] and [`ReadOut`]. `H`, `K`, `V` come from the state.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Queries (RWKV's receptance `r`).
    pub q: ArrayView2<'a, f32>,
    /// Keys.
    pub k: ArrayView2<'a, f32>,
    /// Values.
    pub v: ArrayView2<'a, f32>,
    /// The decay.
    pub gate: Gate<'a>,
    /// Inclusive, or exclusive plus bonus.
    pub read_out: ReadOut<'a>,
    /// `ε` of the normalised read-out `o / (qᵀz + ε)`; unused without a normaliser state.
    pub eps: f32,
}

impl<'a> Inputs<'a> {
    /// Inclusive read-out, no gate, `ε = 0`: set the other fields with struct update syntax.
    pub fn new(q: ArrayView2<'a, f32>, k: ArrayView2<'a, f32>, v: ArrayView2<'a, f32>) -> Self {
        Inputs {
            q,
            k,
            v,
            gate: Gate::None,
            read_out: ReadOut::Inclusive,
            eps: 0.0,
        }
    }
}

/// The kernel's state: one `K × V` matrix per head and, for normalised read-outs, one `K`-vector.
#[derive(Clone, Debug, PartialEq)]
pub struct OuterState {
    /// `S`, `[H, K, V]`, indexed `[head, key, value]`.
    pub s: Array3<f32>,
    /// The normaliser `z = Σ (decayed) k`, `[H, K]`; `None` for an unnormalised read-out.
    pub z: Option<Array2<f32>>,
}

impl OuterState {
    /// The zero state for `heads` heads with key size `key` and value size `value`.
    pub fn new(heads: usize, key: usize, value: usize, normalised: bool) -> Self {
        OuterState {
            s: Array3::zeros((heads, key, value)),
            z: normalised.then(|| Array2::zeros((heads, key))),
        }
    }

    /// `(H, K, V)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        self.s.dim()
    }
}

/// Checks every shape against the state; returns `(T, H, K, V)`.
#[track_caller]
fn check(x: &Inputs, s: &Array3<f32>, what: &str) -> (usize, usize, usize, usize) {
    let (h, kd, vd) = s.dim();
    let t = x.q.nrows();
    assert_eq!(x.q.dim(), (t, h * kd), "{what}: q must be [T, H·K]");
    assert_eq!(x.k.dim(), (t, h * kd), "{what}: k must be [T, H·K]");
    assert_eq!(x.v.dim(), (t, h * vd), "{what}: v must be [T, H·V]");
    match x.gate {
        Gate::None => {}
        Gate::Head(g) => assert_eq!(g.len(), h, "{what}: a per-head gate must be [H]"),
        Gate::Key(g) | Gate::KeyDecay(g) => {
            assert_eq!(g.len(), h * kd, "{what}: a per-key gate must be [H·K]")
        }
        Gate::KeyToken(g) | Gate::KeyTokenDecay(g) => {
            assert_eq!(
                g.dim(),
                (t, h * kd),
                "{what}: a per-token gate must be [T, H·K]"
            )
        }
    }
    if let ReadOut::Bonus(u) = x.read_out {
        assert_eq!(u.len(), h * kd, "{what}: the bonus must be [H·K]");
    }
    (t, h, kd, vd)
}

/// Runs `body` on the unnormalised kernel, or on the kernel with a column of ones appended to
/// every head's values (whose output is the denominator) when the state has a normaliser.
#[track_caller]
fn with_normaliser(
    x: &Inputs,
    state: &mut OuterState,
    what: &str,
    body: impl FnOnce(&Inputs, &mut Array3<f32>) -> Array2<f32>,
) -> Array2<f32> {
    let (t, h, kd, vd) = check(x, &state.s, what);
    let Some(z) = state.z.as_mut() else {
        return body(x, &mut state.s);
    };
    assert_eq!(z.dim(), (h, kd), "{what}: the normaliser must be [H, K]");
    let w = vd + 1;
    let mut v1 = Array2::<f32>::ones((t, h * w));
    let mut s1 = Array3::<f32>::zeros((h, kd, w));
    for head in 0..h {
        v1.slice_mut(s![.., head * w..head * w + vd])
            .assign(&x.v.slice(s![.., head * vd..(head + 1) * vd]));
        s1.slice_mut(s![head, .., ..vd])
            .assign(&state.s.index_axis(Axis(0), head));
        s1.slice_mut(s![head, .., vd]).assign(&z.row(head));
    }
    let x1 = Inputs {
        q: x.q.view(),
        k: x.k.view(),
        v: v1.view(),
        gate: x.gate.reborrow(),
        read_out: x.read_out.reborrow(),
        eps: x.eps,
    };
    let y1 = body(&x1, &mut s1);
    for head in 0..h {
        state
            .s
            .index_axis_mut(Axis(0), head)
            .assign(&s1.slice(s![head, .., ..vd]));
        z.row_mut(head).assign(&s1.slice(s![head, .., vd]));
    }
    let mut y = Array2::<f32>::zeros((t, h * vd));
    for head in 0..h {
        let num = y1.slice(s![.., head * w..head * w + vd]);
        let den = y1.column(head * w + vd);
        Zip::from(y.slice_mut(s![.., head * vd..(head + 1) * vd]).rows_mut())
            .and(num.rows())
            .and(&den)
            .for_each(|mut o, n, &d| {
                let inv = 1.0 / (d + x.eps);
                Zip::from(&mut o).and(&n).for_each(|o, &n| *o = n * inv);
            });
    }
    y
}

/// Recurrent path: the definition, one token at a time.
///
/// # Shapes
/// See [`Inputs`]; `state.s: [H, K, V]`, `state.z: [H, K]` → `[T, H·V]`.
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn recurrent(x: &Inputs, state: &mut OuterState) -> Array2<f32> {
    with_normaliser(x, state, "outer_product::recurrent", recurrent_raw)
}

fn recurrent_raw(x: &Inputs, s: &mut Array3<f32>) -> Array2<f32> {
    let (h, kd, vd) = s.dim();
    let t_len = x.q.nrows();
    let mut y = Array2::<f32>::zeros((t_len, h * vd));
    let constant: Option<Array1<f32>> = match x.gate {
        Gate::None => None,
        Gate::Head(g) => Some(Array1::from_shape_fn(h * kd, |c| g[c / kd].exp())),
        Gate::Key(g) => Some(g.mapv(f32::exp)),
        Gate::KeyDecay(g) => Some(g.to_owned()),
        Gate::KeyToken(_) | Gate::KeyTokenDecay(_) => None,
    };
    let mut v_row = vec![0.0f32; vd];
    for t in 0..t_len {
        for head in 0..h {
            let mut sh = s.index_axis_mut(Axis(0), head);
            let mut yh = y.slice_mut(s![t, head * vd..(head + 1) * vd]);
            for (dst, &src) in v_row
                .iter_mut()
                .zip(x.v.slice(s![t, head * vd..(head + 1) * vd]))
            {
                *dst = src;
            }
            let yh = yh
                .as_slice_mut()
                .expect("rows of a new array are contiguous");
            for i in 0..kd {
                let c = head * kd + i;
                let (qi, ki) = (x.q[[t, c]], x.k[[t, c]]);
                let gi = match (x.gate, &constant) {
                    (Gate::KeyToken(g), _) => g[[t, c]].exp(),
                    (Gate::KeyTokenDecay(g), _) => g[[t, c]],
                    (_, Some(e)) => e[c],
                    _ => 1.0,
                };
                let mut row = sh.row_mut(i);
                let row = row.as_slice_mut().expect("state rows are contiguous");
                match x.read_out {
                    ReadOut::Bonus(u) => {
                        let rk_u = qi * u[c] * ki;
                        for ((y, s), &v) in yh.iter_mut().zip(row.iter_mut()).zip(&v_row) {
                            *y += rk_u * v + qi * *s;
                            *s = *s * gi + ki * v;
                        }
                    }
                    ReadOut::Inclusive => {
                        for ((y, s), &v) in yh.iter_mut().zip(row.iter_mut()).zip(&v_row) {
                            *s = *s * gi + ki * v;
                            *y += qi * *s;
                        }
                    }
                }
            }
        }
    }
    y
}

/// Parallel path: the masked quadratic form over all `T` tokens at once (one chunk of length
/// `T`), starting from and updating the carried state.
///
/// # Shapes
/// See [`recurrent`].
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn parallel(x: &Inputs, state: &mut OuterState) -> Array2<f32> {
    let t = x.q.nrows().max(1);
    with_normaliser(x, state, "outer_product::parallel", |x, s| {
        chunkwise_raw(x, s, t)
    })
}

/// Chunkwise path: the quadratic form inside chunks of `chunk` tokens (the last one may be
/// shorter), the state carried between chunks. `chunk = 1` is the recurrence and `chunk ≥ T` the
/// parallel form.
///
/// # Shapes
/// See [`recurrent`].
///
/// # Panics
/// On mismatched shapes, or if `chunk` is 0.
#[track_caller]
pub fn chunkwise(x: &Inputs, state: &mut OuterState, chunk: usize) -> Array2<f32> {
    assert!(
        chunk > 0,
        "outer_product::chunkwise: chunk must be positive"
    );
    with_normaliser(x, state, "outer_product::chunkwise", |x, s| {
        chunkwise_raw(x, s, chunk)
    })
}

/// Per-call scratch, allocated once.
struct Scratch {
    /// The chunk's gates `e^{λ}` of one head, `[C, K]`.
    w: Array2<f32>,
    /// `q ⊙ e^{L_q}` (inter-chunk read-out), then `k ⊙ e^{L_end − L}` (state update), `[C, K]`.
    scaled: Array2<f32>,
    /// `P`, `[C, C]`.
    p: Array2<f32>,
    /// Contiguous copies of the chunk's `q` and `k` of one head, `[C, K]`.
    q: Array2<f32>,
    k: Array2<f32>,
    /// `e^{Δ·λ_i}` for constant gates, `[C + 1, K]` (row `Δ`).
    table: Array2<f32>,
    /// A running product of gates, `[K]`.
    run: Vec<f32>,
    /// The chunk's total decay `e^{L_end}`, `[K]`.
    total: Vec<f32>,
}

/// `a ← a ⊙ b`, flushing results below `f32::MIN_POSITIVE` to 0 (products of gates only shrink;
/// subnormal values would only slow the arithmetic down).
#[inline]
fn mul_flush(a: &mut [f32], b: &[f32]) {
    for (a, &b) in a.iter_mut().zip(b) {
        let p = *a * b;
        *a = if p < f32::MIN_POSITIVE { 0.0 } else { p };
    }
}

/// `Σ_i a_i b_i c_i`, eight partial sums so that it vectorises.
#[inline]
fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = a.len() / 8 * 8;
    for ((a, b), c) in a[..n]
        .chunks_exact(8)
        .zip(b[..n].chunks_exact(8))
        .zip(c[..n].chunks_exact(8))
    {
        for l in 0..8 {
            acc[l] += a[l] * b[l] * c[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in n..a.len() {
        sum += a[i] * b[i] * c[i];
    }
    sum
}

fn chunkwise_raw(x: &Inputs, s: &mut Array3<f32>, chunk: usize) -> Array2<f32> {
    let (h, kd, vd) = s.dim();
    let t_len = x.q.nrows();
    let mut y = Array2::<f32>::zeros((t_len, h * vd));
    if t_len == 0 {
        return y;
    }
    let c_max = chunk.min(t_len);
    // The heads are independent: each task owns one head's state and output columns.
    let heads: Vec<_> = s
        .outer_iter_mut()
        .zip(y.axis_chunks_iter_mut(Axis(1), vd))
        .enumerate()
        .collect();
    let scratch = || Scratch::new(c_max, kd);
    let run = |sc: &mut Scratch, (head, (sh, yh))| chunkwise_head(x, head, chunk, sh, yh, sc);
    if t_len * h * kd * vd >= PARALLEL_MIN_WORK {
        heads.into_par_iter().for_each_init(scratch, run);
    } else {
        let mut sc = scratch();
        heads.into_iter().for_each(|head| run(&mut sc, head));
    }
    y
}

impl Scratch {
    /// Buffers for chunks of up to `c_max` tokens and `kd` keys.
    fn new(c_max: usize, kd: usize) -> Self {
        Scratch {
            w: Array2::ones((c_max, kd)),
            scaled: Array2::zeros((c_max, kd)),
            p: Array2::zeros((c_max, c_max)),
            q: Array2::zeros((c_max, kd)),
            k: Array2::zeros((c_max, kd)),
            table: Array2::ones((c_max + 1, kd)),
            run: vec![1.0; kd],
            total: vec![1.0; kd],
        }
    }
}

/// The chunkwise path of one head: its state `sh: [K, V]` and output columns `y: [T, V]`.
fn chunkwise_head(
    x: &Inputs,
    head: usize,
    chunk: usize,
    mut sh: ArrayViewMut2<f32>,
    mut y: ArrayViewMut2<f32>,
    sc: &mut Scratch,
) {
    let (kd, vd) = sh.dim();
    let t_len = x.q.nrows();
    let c_max = chunk.min(t_len);
    let exclusive = matches!(x.read_out, ReadOut::Bonus(_));
    let gated = !matches!(x.gate, Gate::None);
    let kc = head * kd..(head + 1) * kd;
    let vc = head * vd..(head + 1) * vd;
    // Constant gates (Head, Key): e^{λ} once, and the powers e^{Δλ} by repeated products.
    let constant: Option<Array1<f32>> = match x.gate {
        Gate::Head(g) => Some(Array1::from_elem(kd, g[head].exp())),
        Gate::Key(g) => Some(g.slice(s![kc.clone()]).mapv(f32::exp)),
        Gate::KeyDecay(g) => Some(g.slice(s![kc.clone()]).to_owned()),
        _ => None,
    };
    if let Some(w) = &constant {
        let w = w.as_slice().expect("new arrays are contiguous");
        for d in 1..=c_max {
            let (prev, mut rest) = sc.table.view_mut().split_at(Axis(0), d);
            let row = rest.row_mut(0).into_slice().expect("contiguous rows");
            row.copy_from_slice(prev.row(d - 1).to_slice().expect("contiguous rows"));
            mul_flush(row, w);
        }
        for mut row in sc.w.rows_mut() {
            row.assign(&ArrayView1::from(w));
        }
    }
    let mut c0 = 0;
    while c0 < t_len {
        let c1 = (c0 + chunk).min(t_len);
        let c = c1 - c0;
        sc.q.slice_mut(s![..c, ..])
            .assign(&x.q.slice(s![c0..c1, kc.clone()]));
        sc.k.slice_mut(s![..c, ..])
            .assign(&x.k.slice(s![c0..c1, kc.clone()]));
        let v = x.v.slice(s![c0..c1, vc.clone()]);
        let mut yc = y.slice_mut(s![c0..c1, ..]);
        match x.gate {
            Gate::KeyToken(g) => {
                sc.w.slice_mut(s![..c, ..])
                    .zip_mut_with(&g.slice(s![c0..c1, kc.clone()]), |w, &l| *w = l.exp())
            }
            Gate::KeyTokenDecay(g) => {
                sc.w.slice_mut(s![..c, ..])
                    .assign(&g.slice(s![c0..c1, kc.clone()]))
            }
            _ => {}
        }
        // Inter-chunk: yc = (q ⊙ e^{L_q}) S, e^{L_q} the running product of the gates up to
        // t (inclusive) or t − 1 (exclusive).
        if gated {
            sc.run.fill(1.0);
            for t in 0..c {
                let w = sc.w.row(t);
                let w = w.to_slice().expect("contiguous rows");
                if !exclusive {
                    mul_flush(&mut sc.run, w);
                }
                let mut out = sc.scaled.row_mut(t);
                let out = out.as_slice_mut().expect("contiguous rows");
                let q = sc.q.row(t);
                for ((o, &q), &r) in out.iter_mut().zip(q.iter()).zip(&sc.run) {
                    *o = q * r;
                }
                if exclusive {
                    mul_flush(&mut sc.run, w);
                }
            }
            sc.total.copy_from_slice(&sc.run);
        } else {
            sc.scaled
                .slice_mut(s![..c, ..])
                .assign(&sc.q.slice(s![..c, ..]));
        }
        general_mat_mul(1.0, &sc.scaled.slice(s![..c, ..]), &sh, 0.0, &mut yc);
        // Intra-chunk: P (masked, decayed), then yc += P v.
        intra_scores(x, head, kd, c, exclusive, sc);
        general_mat_mul(1.0, &sc.p.slice(s![..c, ..c]), &v, 1.0, &mut yc);
        // State: S = diag(e^{L_end}) S + (k ⊙ e^{L_end − L})ᵀ v.
        if gated {
            for (mut row, &e) in sh.rows_mut().into_iter().zip(&sc.total) {
                row.mapv_inplace(|s| s * e);
            }
            sc.run.fill(1.0);
            for t in (0..c).rev() {
                let mut out = sc.scaled.row_mut(t);
                let out = out.as_slice_mut().expect("contiguous rows");
                let k = sc.k.row(t);
                for ((o, &k), &r) in out.iter_mut().zip(k.iter()).zip(&sc.run) {
                    *o = k * r;
                }
                mul_flush(
                    &mut sc.run,
                    sc.w.row(t).to_slice().expect("contiguous rows"),
                );
            }
        } else {
            sc.scaled
                .slice_mut(s![..c, ..])
                .assign(&sc.k.slice(s![..c, ..]));
        }
        general_mat_mul(1.0, &sc.scaled.slice(s![..c, ..]).t(), &v, 1.0, &mut sh);
        c0 = c1;
    }
}

/// Fills `sc.p[..c, ..c]` with the masked, decayed scores `P_{ts}` (and the bonus diagonal).
fn intra_scores(x: &Inputs, head: usize, kd: usize, c: usize, exclusive: bool, sc: &mut Scratch) {
    // The first key position masked for query t.
    let first_masked = |t: usize| if exclusive { t } else { t + 1 };
    // Lag Δ between query t and an earlier key s: the number of gates applied in between.
    let lag = |t: usize, s: usize| if exclusive { t - 1 - s } else { t - s };
    let Scratch {
        w,
        p,
        q,
        k,
        table,
        run,
        ..
    } = sc;
    let mut p = p.slice_mut(s![..c, ..c]);
    match x.gate {
        Gate::None | Gate::Head(_) => {
            general_mat_mul(
                1.0,
                &q.slice(s![..c, ..]),
                &k.slice(s![..c, ..]).t(),
                0.0,
                &mut p,
            );
            let decayed = matches!(x.gate, Gate::Head(_));
            for t in 0..c {
                let mut row = p.row_mut(t);
                if decayed {
                    for s in 0..first_masked(t) {
                        row[s] *= table[[lag(t, s), 0]];
                    }
                }
                for s in first_masked(t)..c {
                    row[s] = 0.0;
                }
            }
        }
        Gate::Key(_) | Gate::KeyDecay(_) => {
            for t in 0..c {
                let qt = q.row(t);
                let qt = qt.to_slice().expect("contiguous rows");
                for s in 0..c {
                    p[[t, s]] = if s < first_masked(t) {
                        let d = table.row(lag(t, s));
                        dot3(qt, k.row(s).to_slice().unwrap(), d.to_slice().unwrap())
                    } else {
                        0.0
                    };
                }
            }
        }
        Gate::KeyToken(_) | Gate::KeyTokenDecay(_) => {
            // For query t, walk the keys backwards from the newest visible one, multiplying in
            // one gate per step: the factor for key s is Π_{r=s+1}^{t} w_r (inclusive) or
            // Π_{r=s+1}^{t−1} w_r (exclusive), the same e^{L_q,t − L_s} ≤ 1 as a product.
            for t in 0..c {
                let qt = q.row(t);
                let qt = qt.to_slice().expect("contiguous rows");
                let mut row = p.row_mut(t);
                for s in first_masked(t)..c {
                    row[s] = 0.0;
                }
                run.fill(1.0);
                for s in (0..first_masked(t)).rev() {
                    row[s] = dot3(qt, k.row(s).to_slice().unwrap(), run);
                    mul_flush(run, w.row(s).to_slice().unwrap());
                }
            }
        }
    }
    if let ReadOut::Bonus(u) = x.read_out {
        let u = u.slice(s![head * kd..(head + 1) * kd]).to_owned();
        let u = u.as_slice().expect("new arrays are contiguous");
        for t in 0..c {
            p[[t, t]] = dot3(
                q.row(t).to_slice().unwrap(),
                k.row(t).to_slice().unwrap(),
                u,
            );
        }
    }
}
