//! RWKV-5/6's WKV: the recurrent path of the [`outer_product`] kernel with
//! a per-key, per-token decay and the exclusive read-out plus bonus.
//!
//! Per head `h`, with `S ∈ R^{N×N}` indexed `[key, value]`:
//!
//! ```text
//! y_t = r_tᵀ (diag(u) k_t v_tᵀ + S_{t−1})        (exclusive read-out plus bonus u)
//! S_t = diag(w_t) S_{t−1} + k_t v_tᵀ              (decay along the key index)
//! ```
//!
//! The sequence paths (parallel and chunkwise) are [`outer_product::parallel`] and
//! [`outer_product::chunkwise`] with the same `Gate::KeyTokenDecay(w)` (or `Gate::KeyDecay(w)`
//! for RWKV-5's constant decay).

use crate::mixer::outer_product::{self, Gate, Inputs, OuterState, ReadOut};
use crate::ops::wkv_step;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayViewMut1, CowArray, Ix1};
use rayon::prelude::*;

/// The per-token inputs of RWKV-5/6's WKV.
///
/// # Shapes
/// All `[T, C]`, `C = H·N` (a constant decay can be a broadcast view).
#[derive(Clone, Copy, Debug)]
pub struct WkvInputs<'a> {
    /// Receptance (the query).
    pub r: ArrayView2<'a, f32>,
    /// Key.
    pub k: ArrayView2<'a, f32>,
    /// Value.
    pub v: ArrayView2<'a, f32>,
    /// Decay `w ∈ [0, 1]` (not its log).
    pub w: ArrayView2<'a, f32>,
}

/// Runs the recurrence over `T` tokens, updating `s` in place.
///
/// # Shapes
/// `r, k, v, w: [T, C]` (a constant decay can be passed as a broadcast view), `u: [H, N]`,
/// `s: [H, N, N]`, `C = H·N` → `y: [T, C]`.
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn scan(
    r: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    w: ArrayView2<f32>,
    u: ArrayView2<f32>,
    s: &mut Array3<f32>,
) -> Array2<f32> {
    let (h, n, n2) = s.dim();
    assert_eq!(n, n2, "wkv::scan: state must be [H, N, N]");
    assert_eq!(u.dim(), (h, n), "wkv::scan: bonus must be [H, N]");
    assert_eq!(w.dim(), r.dim(), "wkv::scan: `w` shape");
    let u = u
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(h * n);
    let u = u.expect("[H, N] in standard layout flattens");
    let x = Inputs {
        q: r,
        k,
        v,
        gate: Gate::KeyTokenDecay(w),
        read_out: ReadOut::Bonus(u.view()),
        eps: 0.0,
    };
    let mut state = OuterState {
        s: std::mem::take(s),
        z: None,
    };
    let y = outer_product::recurrent(&x, &mut state);
    *s = state.s;
    y
}

/// `x` borrowed if it is contiguous, else copied.
pub(crate) fn contiguous<'a>(x: ArrayView1<'a, f32>) -> CowArray<'a, f32, Ix1> {
    if x.is_standard_layout() {
        CowArray::from(x)
    } else {
        CowArray::from(x.to_owned())
    }
}

/// One token of the recurrence, in place and without allocating: per head,
/// `y_j = Σ_i r_i (u_i k_i v_j + S_ij)`, then `S_ij ← w_i S_ij + k_i v_j` (the same operations,
/// in the same order, as [`scan`] for one token).
///
/// # Shapes
/// `r, k, v, w, u, y: [C]`, `s: [H, N, N]` indexed `[head, key, value]`, `C = H·N`.
///
/// # Panics
/// On mismatched shapes. (Non-contiguous inputs or a non-standard-layout state are copied, the
/// only case that allocates.)
#[track_caller]
pub fn step_into(
    r: ArrayView1<f32>,
    k: ArrayView1<f32>,
    v: ArrayView1<f32>,
    w: ArrayView1<f32>,
    u: ArrayView1<f32>,
    s: &mut Array3<f32>,
    mut y: ArrayViewMut1<f32>,
) {
    let (h, n, n2) = s.dim();
    assert_eq!(n, n2, "wkv::step_into: state must be [H, N, N]");
    for (name, x) in [("r", &r), ("k", &k), ("v", &v), ("w", &w), ("u", &u)] {
        assert_eq!(x.len(), h * n, "wkv::step_into: `{name}` length");
    }
    assert_eq!(y.len(), h * n, "wkv::step_into: `y` length");
    if !s.is_standard_layout() {
        *s = s.as_standard_layout().into_owned();
    }
    let [r, k, v, w, u] = [r, k, v, w, u].map(contiguous);
    let [r, k, v, w, u] = [&r, &k, &v, &w, &u].map(|x| x.as_slice().expect("standard"));
    let state = s.as_slice_mut().expect("standard layout");
    match y.as_slice_mut() {
        Some(ys) => wkv_step([r, k, v, w, u], n, state, ys),
        None => {
            let mut ys = vec![0.0; h * n];
            wkv_step([r, k, v, w, u], n, state, &mut ys);
            y.assign(&ArrayView1::from(&ys));
        }
    }
}

impl WkvInputs<'_> {
    /// Row `b` is one token of the sequence whose state is `states[b]` (batched decode).
    ///
    /// # Panics
    /// If there is not one state per row.
    #[track_caller]
    pub fn scan_each(&self, u: ArrayView2<f32>, states: &mut [&mut Array3<f32>]) -> Array2<f32> {
        assert_eq!(
            states.len(),
            self.r.nrows(),
            "wkv::scan_each: one state per row"
        );
        let mut y = Array2::zeros(self.r.raw_dim());
        let Some(first) = states.first() else {
            return y;
        };
        let (h, n, _) = first.dim();
        assert_eq!(u.dim(), (h, n), "wkv::scan_each: bonus must be [H, N]");
        let u = u.as_standard_layout();
        let u = u.as_slice().expect("standard layout");
        // The sessions are independent: one task each.
        let sessions: Vec<_> = y.outer_iter_mut().zip(states.iter_mut()).collect();
        sessions
            .into_par_iter()
            .enumerate()
            .for_each(|(b, (yb, s))| {
                let [r, k, v, w] = [&self.r, &self.k, &self.v, &self.w].map(|x| x.row(b));
                step_into(r, k, v, w, ArrayView1::from(u), s, yb);
            });
        y
    }
}
