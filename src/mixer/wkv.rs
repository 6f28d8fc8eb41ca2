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
