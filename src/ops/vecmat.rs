//! Vector-matrix products into a caller's buffer, for the small f32 low-rank (LoRA) matrices
//! that checkpoints store `[in, out]` and use as `x A`.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1};

/// `y = x M` without allocating: the rows of `M` scaled by `x` and summed (contiguous passes
/// over a row-major `M`).
///
/// # Shapes
/// `x: [in]`, `m: [in, out]`, `y: [out]`.
///
/// # Panics
/// If the shapes do not match.
#[track_caller]
pub fn vec_mat_into(x: ArrayView1<f32>, m: ArrayView2<f32>, mut y: ArrayViewMut1<f32>) {
    assert_eq!(x.len(), m.nrows(), "vec_mat_into: input length");
    assert_eq!(y.len(), m.ncols(), "vec_mat_into: output length");
    y.fill(0.0);
    for (&xi, row) in x.iter().zip(m.rows()) {
        y.scaled_add(xi, &row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    #[test]
    fn equals_dot() {
        let m = Array2::from_shape_fn((7, 5), |(i, j)| (i * 3 + j) as f32 / 7.0 - 1.0);
        let x = Array1::from_shape_fn(7, |i| i as f32 / 3.0 - 0.5);
        let mut y = Array1::zeros(5);
        vec_mat_into(x.view(), m.view(), y.view_mut());
        let want = x.dot(&m);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
        // A transposed (column-major) matrix gives the same.
        let mt = m.t().as_standard_layout().into_owned();
        vec_mat_into(x.view(), mt.t(), y.view_mut());
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
