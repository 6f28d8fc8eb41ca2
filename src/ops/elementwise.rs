//! Element-wise and row-wise passes over arrays, split across rayon's threads when the array
//! is large (a prompt) and run on the calling thread otherwise (one token, a small batch).

use ndarray::{
    ArrayBase, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, DataMut, Dimension, Zip,
};
use rayon::prelude::*;

/// From this many values a pass is split across rayon's threads (a prompt of a few dozen
/// tokens at the usual widths).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// `a ← f(a)` element-wise.
pub fn map_inplace<S: DataMut<Elem = f32>, D: Dimension>(
    a: &mut ArrayBase<S, D>,
    f: impl Fn(f32) -> f32 + Sync + Send,
) {
    if a.len() >= PARALLEL_MIN_ELEMENTS {
        a.par_mapv_inplace(f);
    } else {
        a.mapv_inplace(f);
    }
}

/// `a ← f(a, b)` element-wise.
///
/// # Panics
/// If the shapes differ.
#[track_caller]
pub fn zip_inplace(
    a: ArrayViewMut2<f32>,
    b: ArrayView2<f32>,
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) {
    for_each_row_with(a, b, |mut a, b| a.zip_mut_with(&b, |a, &b| *a = f(*a, b)));
}

/// `f` on every row of `a` with the same row of `b`.
///
/// # Panics
/// If the shapes differ.
#[track_caller]
pub fn for_each_row_with(
    mut a: ArrayViewMut2<f32>,
    b: ArrayView2<f32>,
    f: impl Fn(ArrayViewMut1<f32>, ArrayView1<f32>) + Sync + Send,
) {
    assert_eq!(a.dim(), b.dim(), "for_each_row_with: shapes");
    let large = a.len() >= PARALLEL_MIN_ELEMENTS;
    let rows = Zip::from(a.rows_mut()).and(b.rows());
    if large {
        rows.par_for_each(f);
    } else {
        rows.for_each(f);
    }
}

/// `f` on every row of `a`.
pub fn for_each_row(mut a: ArrayViewMut2<f32>, f: impl Fn(ArrayViewMut1<f32>) + Sync + Send) {
    if a.len() >= PARALLEL_MIN_ELEMENTS {
        a.axis_iter_mut(Axis(0)).into_par_iter().for_each(f);
    } else {
        a.axis_iter_mut(Axis(0)).for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Both sides of the size threshold, against the plain element-wise loops.
    #[test]
    fn split_passes_equal_plain_loops() {
        for rows in [3, PARALLEL_MIN_ELEMENTS / 64 + 5] {
            let a = Array2::from_shape_fn((rows, 64), |(i, j)| (i * 64 + j) as f32 * 0.01 - 3.0);
            let b = a.mapv(|v| v.sin());

            let mut m = a.clone();
            map_inplace(&mut m, |v| v * v + 1.0);
            assert_eq!(m, a.mapv(|v| v * v + 1.0));

            let mut z = a.clone();
            zip_inplace(z.view_mut(), b.view(), |x, y| x * y - y);
            let mut expected = a.clone();
            expected.zip_mut_with(&b, |x, &y| *x = *x * y - y);
            assert_eq!(z, expected);

            let mut r = a.clone();
            for_each_row(r.view_mut(), |mut row| {
                let sum = row.sum();
                row.mapv_inplace(|v| v - sum);
            });
            for (row, plain) in r.rows().into_iter().zip(a.rows()) {
                let sum = plain.sum();
                assert_eq!(row, plain.mapv(|v| v - sum));
            }
        }
    }
}
