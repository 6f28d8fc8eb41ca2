//! The decayed outer-product kernel shared by RWKV-5 and RWKV-6.
//!
//! Per head `h`, with `S ∈ R^{N×N}` indexed `[key, value]`:
//!
//! ```text
//! y_t = r_tᵀ (diag(u) k_t v_tᵀ + S_{t−1})        (exclusive read-out plus bonus u)
//! S_t = diag(w_t) S_{t−1} + k_t v_tᵀ              (decay along the key index)
//! ```

use ndarray::{Array2, Array3, ArrayView2, Zip};

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
    let dim = r.dim();
    assert_eq!(dim.1, h * n, "wkv::scan: width must be H·N");
    for (name, a) in [("k", &k), ("v", &v), ("w", &w)] {
        assert_eq!(a.dim(), dim, "wkv::scan: `{name}` shape");
    }
    let mut y = Array2::<f32>::zeros(dim);
    for t in 0..dim.0 {
        for head in 0..h {
            let c = head * n..(head + 1) * n;
            let mut sh = s.index_axis_mut(ndarray::Axis(0), head);
            let mut yh = y.slice_mut(ndarray::s![t, c.clone()]);
            let vh = v.slice(ndarray::s![t, c.clone()]);
            for i in 0..n {
                let (ri, ki, wi, ui) = (
                    r[[t, c.start + i]],
                    k[[t, c.start + i]],
                    w[[t, c.start + i]],
                    u[[head, i]],
                );
                let rk_u = ri * ui * ki;
                Zip::from(&mut yh)
                    .and(sh.row_mut(i))
                    .and(&vh)
                    .for_each(|y, s, &v| {
                        *y += rk_u * v + ri * *s;
                        *s = *s * wi + ki * v;
                    });
            }
        }
    }
    y
}

/// Per-token inputs of the recurrence, all `[T, C]` (a constant decay as a broadcast view).
#[derive(Clone, Copy)]
pub struct WkvInputs<'a> {
    /// Receptance `r`.
    pub r: ArrayView2<'a, f32>,
    /// Key `k`.
    pub k: ArrayView2<'a, f32>,
    /// Value `v`.
    pub v: ArrayView2<'a, f32>,
    /// Decay `w` per key channel.
    pub w: ArrayView2<'a, f32>,
}

impl WkvInputs<'_> {
    /// [`scan`] over all rows, as one sequence with state `s`.
    pub fn scan(&self, u: ArrayView2<f32>, s: &mut Array3<f32>) -> Array2<f32> {
        scan(self.r, self.k, self.v, self.w, u, s)
    }

    /// Row `b` is one token of the sequence whose state is `states[b]`.
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
        for (b, s) in states.iter_mut().enumerate() {
            let rows = ndarray::s![b..b + 1, ..];
            let (r, k) = (self.r.slice(rows), self.k.slice(rows));
            let yb = scan(r, k, self.v.slice(rows), self.w.slice(rows), u, s);
            y.row_mut(b).assign(&yb.row(0));
        }
        y
    }
}
