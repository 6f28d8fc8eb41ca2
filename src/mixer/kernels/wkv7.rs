//! The RWKV-7 WKV kernel: a state update by a diagonal plus a rank-one matrix (the "generalised
//! delta rule"), in two sequence algorithms.
//!
//! Per head, with `S ∈ R^{N×N}` indexed `[value, key]` (the official orientation, the transpose
//! of RWKV-5/6's) and one row `r_t, w_t, k_t, v_t, a_t, b_t ∈ R^N` per token:
//!
//! ```text
//! S_t = S_{t−1} diag(w_t) + (S_{t−1} a_t) b_tᵀ + v_t k_tᵀ     (every term uses the old state)
//! y_t = S_t r_t                                               (the state after the update)
//! ```
//!
//! i.e. `S[i][j] ← S[i][j]·w[j] + (Σ_m S[i][m]·a[m])·b[j] + v[i]·k[j]`, `y[i] = Σ_j S[i][j]·r[j]`.
//! RWKV-7 passes `a = −κ̂`, `b = κ̂ ⊙ iclr` (the official kernel's `a`, `b`), with `w ∈ (0.545, 1)`.
//!
//! - [`scan`] runs the recurrence token by token (the official CPU loop);
//! - [`chunked`] processes `chunk` tokens at a time with matrix products: the product of a chunk's
//!   transitions is a diagonal plus a correction of rank ≤ `chunk`, found by one unit
//!   lower-triangular solve (the WY / UT representation; spec/rwkv.md A.9, spec/mixers.md §9).
//!
//! Both take any `w ∈ [0, 1]`. [`chunked`] forms the decay between two tokens of a chunk as a
//! quotient of decays from the chunk's start (one matrix product for all pairs) only while the
//! whole chunk's decay stays above 2⁻⁶⁴, so that no factor leaves f32's range (always so for
//! RWKV-7's decays in chunks of up to 72 tokens); otherwise as running products of `w`, which
//! cannot overflow however strong the decay. tests/rwkv7.rs pins [`chunked`] to [`scan`] and both
//! to a plain f64 recurrence, extreme decays and 4096-token sequences included.

use crate::mixer::wkv::contiguous;
use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis,
    CowArray, Ix2,
};

/// Width of the partial sums in [`dot`] (eight lanes vectorise on every x86-64 and ARM target).
const LANES: usize = 8;

/// `x[j..j + LANES]` as an array (the form the vectoriser needs: no iterator chains).
#[inline(always)]
fn lanes(x: &[f32], j: usize) -> &[f32; LANES] {
    x[j..j + LANES].try_into().expect("LANES elements")
}

/// `x[j..j + LANES]` as a mutable array.
#[inline(always)]
fn lanes_mut(x: &mut [f32], j: usize) -> &mut [f32; LANES] {
    (&mut x[j..j + LANES]).try_into().expect("LANES elements")
}

/// `y ← y + c·x`.
#[inline]
fn axpy(c: f32, x: &[f32], y: &mut [f32]) {
    let n = y.len();
    let x = &x[..n];
    let full = n / LANES * LANES;
    for j in (0..full).step_by(LANES) {
        let (x8, y8) = (lanes(x, j), lanes_mut(y, j));
        for l in 0..LANES {
            y8[l] += c * x8[l];
        }
    }
    for j in full..n {
        y[j] += c * x[j];
    }
}

/// `Σ x[i]·y[i]` with `LANES` independent partial sums, so the loop vectorises.
#[inline]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let y = &y[..n];
    let full = n / LANES * LANES;
    let mut acc = [0.0f32; LANES];
    for j in (0..full).step_by(LANES) {
        let (x8, y8) = (lanes(x, j), lanes(y, j));
        for l in 0..LANES {
            acc[l] += x8[l] * y8[l];
        }
    }
    acc.iter().sum::<f32>() + (full..n).map(|j| x[j] * y[j]).sum::<f32>()
}

/// One row of the update, `s ← s⊙w + sa·b + vi·k`, returning `s·r` (the new row's output).
#[inline]
fn update_row(s: &mut [f32], w: &[f32], b: &[f32], k: &[f32], r: &[f32], sa: f32, vi: f32) -> f32 {
    let n = s.len();
    let (w, b, k, r) = (&w[..n], &b[..n], &k[..n], &r[..n]);
    let full = n / LANES * LANES;
    let mut acc = [0.0f32; LANES];
    for j in (0..full).step_by(LANES) {
        let s8 = lanes_mut(s, j);
        let (w8, b8, k8, r8) = (lanes(w, j), lanes(b, j), lanes(k, j), lanes(r, j));
        for l in 0..LANES {
            s8[l] = s8[l] * w8[l] + sa * b8[l] + vi * k8[l];
            acc[l] += s8[l] * r8[l];
        }
    }
    let mut y = acc.iter().sum::<f32>();
    for j in full..n {
        s[j] = s[j] * w[j] + sa * b[j] + vi * k[j];
        y += s[j] * r[j];
    }
    y
}

/// The inputs as standard-layout `[T, C]` arrays, after checking every shape.
#[track_caller]
fn inputs<'a>(
    what: &str,
    rwkvab: [ArrayView2<'a, f32>; 6],
    s: &mut Array3<f32>,
) -> [CowArray<'a, f32, Ix2>; 6] {
    let (h, n, n2) = s.dim();
    assert_eq!(n, n2, "{what}: state must be [H, N, N]");
    let dim = rwkvab[0].dim();
    assert_eq!(dim.1, h * n, "{what}: width must be H·N = {}", h * n);
    for (name, x) in ["r", "w", "k", "v", "a", "b"].iter().zip(&rwkvab) {
        assert_eq!(x.dim(), dim, "{what}: `{name}` shape");
    }
    if !s.is_standard_layout() {
        *s = s.as_standard_layout().into_owned();
    }
    rwkvab.map(|x| {
        if x.is_standard_layout() {
            CowArray::from(x)
        } else {
            CowArray::from(x.as_standard_layout().into_owned())
        }
    })
}

/// Row `t` of head `head` (columns `head·n .. head·n + n`) of a standard-layout `[T, C]` slice.
#[inline]
fn head_row(x: &[f32], c: usize, n: usize, head: usize, t: usize) -> &[f32] {
    &x[t * c + head * n..][..n]
}

/// The recurrence token by token, updating `s` in place: the official CPU loop.
///
/// # Shapes
/// `r, w, k, v, a, b: [T, C]`, `s: [H, N, N]` indexed `[head, value, key]`, `C = H·N` →
/// `y: [T, C]`.
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn scan(
    r: ArrayView2<f32>,
    w: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    s: &mut Array3<f32>,
) -> Array2<f32> {
    let [r, w, k, v, a, b] = inputs("wkv7::scan", [r, w, k, v, a, b], s);
    let (t_len, c) = r.dim();
    let n = s.dim().1;
    let mut y = Array2::<f32>::zeros((t_len, c));
    let ys = y.as_slice_mut().expect("fresh array");
    let [r, w, k, v, a, b] = [&r, &w, &k, &v, &a, &b].map(|x| x.as_slice().expect("standard"));
    let state = s.as_slice_mut().expect("standard layout");
    for (head, sh) in state.chunks_exact_mut(n * n).enumerate() {
        for t in 0..t_len {
            let row = |x| head_row(x, c, n, head, t);
            let (rt, wt, kt, vt, at, bt) = (row(r), row(w), row(k), row(v), row(a), row(b));
            let yt = &mut ys[t * c + head * n..][..n];
            for ((si, yi), &vi) in sh.chunks_exact_mut(n).zip(yt).zip(vt) {
                let sa = dot(si, at);
                *yi = update_row(si, wt, bt, kt, rt, sa, vi);
            }
        }
    }
    y
}

/// One token of the recurrence, in place and without allocating: [`scan`] for `T = 1`, with
/// the output written into `y` (the same operations in the same order).
///
/// # Shapes
/// `r, w, k, v, a, b, y: [C]`, `s: [H, N, N]` indexed `[head, value, key]`, `C = H·N`.
///
/// # Panics
/// On mismatched shapes. (Non-contiguous inputs or a non-standard-layout state are copied, the
/// only case that allocates.)
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn step_into(
    r: ArrayView1<f32>,
    w: ArrayView1<f32>,
    k: ArrayView1<f32>,
    v: ArrayView1<f32>,
    a: ArrayView1<f32>,
    b: ArrayView1<f32>,
    s: &mut Array3<f32>,
    mut y: ArrayViewMut1<f32>,
) {
    let (h, n, n2) = s.dim();
    assert_eq!(n, n2, "wkv7::step_into: state must be [H, N, N]");
    let inputs = [r, w, k, v, a, b];
    for (name, x) in ["r", "w", "k", "v", "a", "b"].iter().zip(&inputs) {
        assert_eq!(x.len(), h * n, "wkv7::step_into: `{name}` length");
    }
    assert_eq!(y.len(), h * n, "wkv7::step_into: `y` length");
    if !s.is_standard_layout() {
        *s = s.as_standard_layout().into_owned();
    }
    let inputs = inputs.map(contiguous);
    let [r, w, k, v, a, b] = [0, 1, 2, 3, 4, 5].map(|i| inputs[i].as_slice().expect("standard"));
    let state = s.as_slice_mut().expect("standard layout");
    let kernel = |y: &mut [f32], state: &mut [f32]| {
        for (head, sh) in state.chunks_exact_mut(n * n).enumerate() {
            let cols = head * n..(head + 1) * n;
            let (rt, wt, kt) = (&r[cols.clone()], &w[cols.clone()], &k[cols.clone()]);
            let (vt, at, bt) = (&v[cols.clone()], &a[cols.clone()], &b[cols.clone()]);
            for ((si, yi), &vi) in sh.chunks_exact_mut(n).zip(&mut y[cols]).zip(vt) {
                let sa = dot(si, at);
                *yi = update_row(si, wt, bt, kt, rt, sa, vi);
            }
        }
    };
    match y.as_slice_mut() {
        Some(ys) => kernel(ys, state),
        None => {
            let mut ys = vec![0.0; h * n];
            kernel(&mut ys, state);
            y.assign(&ArrayView1::from(&ys));
        }
    }
}

/// Below this, a chunk's decay from its start is too strong for the quotient form of the
/// in-chunk products (`1 / Π w` would leave f32's range), and [`Chunk::pairs_by_products`] is
/// used instead. RWKV-7's decays (`w > 0.545`) stay above it for chunks of up to 72 tokens.
const QUOTIENT_FLOOR: f32 = 5.421_011e-20; // 2^-64

/// Indices of the kernel's inputs in [`HeadRows`].
const R: usize = 0;
const W: usize = 1;
const K: usize = 2;
const V: usize = 3;
const A: usize = 4;
const B: usize = 5;

/// One head's rows of the inputs `r, w, k, v, a, b` (standard-layout `[T, C]`) in a chunk.
#[derive(Clone, Copy)]
struct HeadRows<'a> {
    src: [&'a [f32]; 6],
    c: usize,
    n: usize,
    /// Offset of the head's first element in the chunk's first row.
    start: usize,
}

impl<'a> HeadRows<'a> {
    /// Row `t` of the chunk, input `i`.
    #[inline]
    fn get(&self, i: usize, t: usize) -> &'a [f32] {
        &self.src[i][self.start + t * self.c..][..self.n]
    }
}

/// Scratch space of [`chunked`] for one head and one chunk of up to `len` tokens (allocated
/// once per call).
struct Chunk {
    /// `D_{−1,t} = Π_{q≤t} w_q`, the decay from the chunk's start through row `t`, `[len, N]`.
    d: Array2<f32>,
    /// `D_{−1,L−1}`, the decay over the whole chunk, `[N]`.
    d_end: Array1<f32>,
    /// `[V; H]`, `[2·len, N]`: the values, then `h_t = S_{t−1} a_t` for every row.
    vh: Array2<f32>,
    /// `[K̃; B̃]`, `[2·len, N]`: `k_s` and `b_s` decayed to the chunk's end.
    kb: Array2<f32>,
    /// `[W; R̃]`, `[2·len, N]`: first `a_t ⊙ D_{−1,t−1}`, which the UT transform turns into
    /// `W`; then `R̃`, `r_t ⊙ D_{−1,t}`.
    wr: Array2<f32>,
    /// `[W; R̃] S0ᵀ`, `[2·len, N]`.
    x: Array2<f32>,
    /// `U`, `[len, N]`: the part of `H` that does not depend on the chunk's start state.
    u: Array2<f32>,
    /// `[[A_ak, A_ab], [A_rk, A_rb]]`, `[2·len, 2·len]`, with `D_{s,t} = Π_{s<q≤t} w_q`:
    /// `[A_ak]_{ts} = Σ_j a_t[j] k_s[j] D_{s,t−1}[j]` for `s < t` (0 otherwise),
    /// `[A_rk]_{ts} = Σ_j r_t[j] k_s[j] D_{s,t}[j]` for `s ≤ t`, and likewise with `b_s`.
    m: Array2<f32>,
}

impl Chunk {
    fn new(len: usize, n: usize) -> Self {
        let m = |rows, cols| Array2::zeros((rows, cols));
        Chunk {
            d: m(len, n),
            d_end: Array1::zeros(n),
            vh: m(2 * len, n),
            kb: m(2 * len, n),
            wr: m(2 * len, n),
            x: m(2 * len, n),
            u: m(len, n),
            m: m(2 * len, 2 * len),
        }
    }

    /// Runs the `l` rows of `x` (one head, one chunk): reads and updates `s` (`[N, N]`),
    /// writes `y` (`[l, N]`).
    fn run(&mut self, x: HeadRows, l: usize, s: ArrayViewMut2<f32>, y: ArrayViewMut2<f32>) {
        for t in 0..l {
            row_mut(&mut self.vh, t).copy_from_slice(x.get(V, t));
        }
        self.decays(x, l);
        if self.d_end.iter().all(|&d| d >= QUOTIENT_FLOOR) {
            self.pairs_by_quotients(x, l);
        } else {
            self.pairs_by_products(x, l);
        }
        self.ut_transform(l);
        self.apply_state(l, s, y);
    }

    /// `D_{−1,t}`, `D_{−1,L−1}`, and `[a_t ⊙ D_{−1,t−1}; r_t ⊙ D_{−1,t}]` into `wr`.
    fn decays(&mut self, x: HeadRows, l: usize) {
        let Chunk { d, d_end, wr, .. } = self;
        d_end.fill(1.0);
        for t in 0..l {
            for ((o, &a), &p) in row_mut(wr, t).iter_mut().zip(x.get(A, t)).zip(d_end.iter()) {
                *o = a * p;
            }
            for (p, &w) in d_end.iter_mut().zip(x.get(W, t)) {
                *p *= w;
            }
            row_mut(d, t).copy_from_slice(d_end.as_slice().expect("standard"));
            let r = x.get(R, t);
            for ((o, &r), &p) in row_mut(wr, l + t).iter_mut().zip(r).zip(d_end.iter()) {
                *o = r * p;
            }
        }
    }

    /// `m` as one matrix product, `D_{s,t} = D_{−1,t} / D_{−1,s}`:
    /// `m = [a ⊙ D_{−1,t−1}; r ⊙ D_{−1,t}] · [k ⊘ D_{−1,s}; b ⊘ D_{−1,s}]ᵀ`, then masked; and
    /// `[K̃; B̃] = [k ⊘ D_{−1,s}; b ⊘ D_{−1,s}] ⊙ D_{−1,L−1}`. Needs `D_{−1,L−1} ≥`
    /// [`QUOTIENT_FLOOR`].
    fn pairs_by_quotients(&mut self, x: HeadRows, l: usize) {
        let Chunk {
            d,
            d_end,
            kb,
            wr,
            m,
            ..
        } = self;
        for t in 0..l {
            for (src, dst) in [(x.get(K, t), t), (x.get(B, t), l + t)] {
                for ((o, &x), &p) in row_mut(kb, dst).iter_mut().zip(src).zip(row(d, t)) {
                    *o = x / p;
                }
            }
        }
        let mut mm = m.slice_mut(s![..2 * l, ..2 * l]);
        general_mat_mul(
            1.0,
            &wr.slice(s![..2 * l, ..]),
            &kb.slice(s![..2 * l, ..]).t(),
            0.0,
            &mut mm,
        );
        for t in 0..l {
            // a-side rows keep s < t, r-side rows keep s ≤ t.
            for (row, from) in [(t, t), (l + t, t + 1)] {
                let mut rm = mm.row_mut(row);
                rm.slice_mut(s![from..l]).fill(0.0);
                rm.slice_mut(s![l + from..2 * l]).fill(0.0);
            }
        }
        for mut row in kb.slice_mut(s![..2 * l, ..]).rows_mut() {
            row *= &*d_end;
        }
    }

    /// `m` and `[K̃; B̃]` by running products of `w` (any decay, however strong): for each `s`,
    /// `k_s` and `b_s` are decayed one row at a time and dotted with `a_t` and `r_t`.
    fn pairs_by_products(&mut self, x: HeadRows, l: usize) {
        let Chunk { kb, m, .. } = self;
        m.fill(0.0);
        let (mut kps, mut bps) = kb.view_mut().split_at(Axis(0), l);
        for s in 0..l {
            let mut kp = kps.row_mut(s);
            let mut bp = bps.row_mut(s);
            let (kp, bp) = (
                kp.as_slice_mut().expect("standard"),
                bp.as_slice_mut().expect("standard"),
            );
            kp.copy_from_slice(x.get(K, s));
            bp.copy_from_slice(x.get(B, s));
            m[[l + s, s]] = dot(x.get(R, s), kp);
            m[[l + s, l + s]] = dot(x.get(R, s), bp);
            for t in s + 1..l {
                let [ak, ab, rk, rb] = decayed_dots(kp, bp, x.get(A, t), x.get(W, t), x.get(R, t));
                m[[t, s]] = ak;
                m[[t, l + s]] = ab;
                m[[l + t, s]] = rk;
                m[[l + t, l + s]] = rb;
            }
        }
    }

    /// `U = (I − A_ab)⁻¹ A_ak V` and `W = (I − A_ab)⁻¹ (a ⊙ D_{−1,t−1})` (in place in `wr`'s
    /// first rows): forward substitution through the unit lower-triangular `I − A_ab`.
    fn ut_transform(&mut self, l: usize) {
        let mut u = self.u.slice_mut(s![..l, ..]);
        general_mat_mul(
            1.0,
            &self.m.slice(s![..l, ..l]),
            &self.vh.slice(s![..l, ..]),
            0.0,
            &mut u,
        );
        let n = self.u.ncols();
        let u = self.u.as_slice_mut().expect("standard");
        let w = self.wr.as_slice_mut().expect("standard");
        for t in 1..l {
            let (udone, urest) = u.split_at_mut(t * n);
            let (wdone, wrest) = w.split_at_mut(t * n);
            let (ut, wt) = (&mut urest[..n], &mut wrest[..n]);
            for s in 0..t {
                let c = self.m[[t, l + s]];
                axpy(c, &udone[s * n..(s + 1) * n], ut);
                axpy(c, &wdone[s * n..(s + 1) * n], wt);
            }
        }
    }

    /// With the chunk's start state `s`: `H = U + W Sᵀ`, `y = R̃ Sᵀ + A_rk V + A_rb H`, and
    /// `S ← S diag(D_{−1,L−1}) + Vᵀ K̃ + Hᵀ B̃`.
    fn apply_state(&mut self, l: usize, mut s: ArrayViewMut2<f32>, mut y: ArrayViewMut2<f32>) {
        let mut x = self.x.slice_mut(s![..2 * l, ..]);
        general_mat_mul(1.0, &self.wr.slice(s![..2 * l, ..]), &s.t(), 0.0, &mut x);
        let mut h = self.vh.slice_mut(s![l..2 * l, ..]);
        h.assign(&self.u.slice(s![..l, ..]));
        h += &x.slice(s![..l, ..]);
        y.assign(&x.slice(s![l..2 * l, ..]));
        let vh = self.vh.slice(s![..2 * l, ..]);
        general_mat_mul(1.0, &self.m.slice(s![l..2 * l, ..2 * l]), &vh, 1.0, &mut y);
        for mut row in s.rows_mut() {
            row *= &self.d_end;
        }
        general_mat_mul(1.0, &vh.t(), &self.kb.slice(s![..2 * l, ..]), 1.0, &mut s);
    }
}

/// Row `t` of a standard-layout matrix, mutable.
#[inline]
fn row_mut(x: &mut Array2<f32>, t: usize) -> &mut [f32] {
    let n = x.ncols();
    &mut x.as_slice_mut().expect("standard")[t * n..(t + 1) * n]
}

/// Row `t` of a standard-layout matrix.
#[inline]
fn row(x: &Array2<f32>, t: usize) -> &[f32] {
    let n = x.ncols();
    &x.as_slice().expect("standard")[t * n..(t + 1) * n]
}

/// For one pair `s < t`: `a_t·kp`, `a_t·bp` (decay up to `t − 1`), then `kp, bp ← ⊙ w_t` and
/// `r_t·kp`, `r_t·bp` (decay up to `t`).
#[inline]
fn decayed_dots(kp: &mut [f32], bp: &mut [f32], at: &[f32], wt: &[f32], rt: &[f32]) -> [f32; 4] {
    let n = kp.len();
    let (bp, at, wt, rt) = (&mut bp[..n], &at[..n], &wt[..n], &rt[..n]);
    let full = n / LANES * LANES;
    let mut acc = [[0.0f32; LANES]; 4];
    for j in (0..full).step_by(LANES) {
        let (a, w, r) = (lanes(at, j), lanes(wt, j), lanes(rt, j));
        let kp = lanes_mut(kp, j);
        for l in 0..LANES {
            acc[0][l] += a[l] * kp[l];
            kp[l] *= w[l];
            acc[2][l] += r[l] * kp[l];
        }
        let bp = lanes_mut(bp, j);
        for l in 0..LANES {
            acc[1][l] += a[l] * bp[l];
            bp[l] *= w[l];
            acc[3][l] += r[l] * bp[l];
        }
    }
    let mut out = acc.map(|a| a.iter().sum::<f32>());
    for j in full..n {
        out[0] += at[j] * kp[j];
        out[1] += at[j] * bp[j];
        kp[j] *= wt[j];
        bp[j] *= wt[j];
        out[2] += rt[j] * kp[j];
        out[3] += rt[j] * bp[j];
    }
    out
}

/// The chunkwise form: the same result as [`scan`], `chunk` tokens at a time (the last chunk
/// may be shorter).
///
/// Per chunk and head, with start state `S0`, rows `t = 0..L`, `D_{s,t} = Π_{s<q≤t} w_q`:
///
/// ```text
/// h_t = S_{t−1} a_t = S0 (a_t ⊙ D_{−1,t−1}) + Σ_{s<t} [A_ak]_{ts} v_s + Σ_{s<t} [A_ab]_{ts} h_s
///   ⇒ H = U + W S0ᵀ,  U = (I − A_ab)⁻¹ A_ak V,  W = (I − A_ab)⁻¹ (A ⊙ D_{−1,t−1})   (UT transform)
/// y_t = S0 (r_t ⊙ D_{−1,t}) + Σ_{s≤t} [A_rk]_{ts} v_s + Σ_{s≤t} [A_rb]_{ts} h_s
/// S_L = S0 diag(D_{−1,L−1}) + Σ_s v_s (k_s ⊙ D_{s,L−1})ᵀ + Σ_s h_s (b_s ⊙ D_{s,L−1})ᵀ
/// ```
///
/// with `[A_ak]_{ts} = Σ_j a_t[j] k_s[j] D_{s,t−1}[j]`, `[A_rk]_{ts} = Σ_j r_t[j] k_s[j] D_{s,t}[j]`
/// and likewise `A_ab`, `A_rb` with `b_s` (one matrix product while the chunk's decay allows
/// quotients, see the module docs). `U` and `W` do not depend on `S0`; the parts with `S0` are
/// matrix products. Work per token and head is `O(N² + chunk·N)`; memory `O(chunk² + chunk·N)`.
/// `chunk = 1` is the recurrence itself.
///
/// # Shapes
/// As [`scan`].
///
/// # Panics
/// On mismatched shapes, or if `chunk` is 0.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn chunked(
    r: ArrayView2<f32>,
    w: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    s: &mut Array3<f32>,
    chunk: usize,
) -> Array2<f32> {
    assert!(chunk > 0, "wkv7::chunked: chunk length must be positive");
    let inputs = inputs("wkv7::chunked", [r, w, k, v, a, b], s);
    let (t_len, c) = inputs[0].dim();
    let n = s.dim().1;
    let mut y = Array2::<f32>::zeros((t_len, c));
    let src = [0, 1, 2, 3, 4, 5].map(|i| inputs[i].as_slice().expect("standard"));
    let mut scratch = Chunk::new(chunk.min(t_len.max(1)), n);
    for (head, mut sh) in s.outer_iter_mut().enumerate() {
        for t0 in (0..t_len).step_by(chunk) {
            let l = chunk.min(t_len - t0);
            let x = HeadRows {
                src,
                c,
                n,
                start: t0 * c + head * n,
            };
            let yc = y.slice_mut(s![t0..t0 + l, head * n..(head + 1) * n]);
            scratch.run(x, l, sh.view_mut(), yc);
        }
    }
    y
}
