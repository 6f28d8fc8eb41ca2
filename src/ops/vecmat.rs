//! Vector-matrix products into a caller's buffer, for the small f32 low-rank (LoRA) matrices
//! that checkpoints store `[in, out]` and use as `x A`.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1};

/// Output columns per pass of [`vec_mat_into`]: the unit [`super::Team`] shares out.
pub const COLUMN_BLOCK: usize = 16;

/// `y = x M` without allocating, [`COLUMN_BLOCK`] output columns at a time (each sum taken in
/// input order, so any split of the columns gives the same bits).
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
    let out = m.ncols();
    let mut block = [0.0f32; COLUMN_BLOCK];
    for start in (0..out).step_by(COLUMN_BLOCK) {
        let cols = start..(start + COLUMN_BLOCK).min(out);
        let part = &mut block[..cols.len()];
        column_block(x, m, cols.start, part);
        for (o, v) in y.slice_mut(ndarray::s![cols]).iter_mut().zip(part.iter()) {
            *o = *v;
        }
    }
}

/// `out[j] = Σ_i x[i] · m[i, first + j]` for `j < out.len()`, the sum in input order.
pub(crate) fn column_block(x: ArrayView1<f32>, m: ArrayView2<f32>, first: usize, out: &mut [f32]) {
    if let (Some(data), Some(x), Ok(out)) = (
        m.as_slice(),
        x.as_slice(),
        <&mut [f32; COLUMN_BLOCK]>::try_from(&mut *out),
    ) {
        let n = m.ncols();
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            *out = unsafe { whole_block_avx2(x, data, n, first) };
            return;
        }
        *out = whole_block(x, data, n, first);
        return;
    }
    out.fill(0.0);
    let cols = ndarray::s![.., first..first + out.len()];
    for (&xi, row) in x.iter().zip(m.slice(cols).rows()) {
        match row.as_slice() {
            Some(row) => {
                for (o, &w) in out.iter_mut().zip(row) {
                    *o += xi * w;
                }
            }
            None => {
                for (o, &w) in out.iter_mut().zip(row.iter()) {
                    *o += xi * w;
                }
            }
        }
    }
}

/// One whole block of a row-major matrix (`n` columns): fixed-size rows the compiler
/// vectorises, a multiply and an add per element as in the general case (the same bits).
#[inline(always)]
fn whole_block(x: &[f32], data: &[f32], n: usize, first: usize) -> [f32; COLUMN_BLOCK] {
    let mut acc = [0.0f32; COLUMN_BLOCK];
    for (i, &xi) in x.iter().enumerate() {
        let row = &data[i * n + first..][..COLUMN_BLOCK];
        for (a, &w) in acc.iter_mut().zip(row) {
            *a += xi * w;
        }
    }
    acc
}

/// [`whole_block`] compiled for AVX2 (256-bit lanes; no fused multiply-add, so the same bits).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn whole_block_avx2(x: &[f32], data: &[f32], n: usize, first: usize) -> [f32; COLUMN_BLOCK] {
    whole_block(x, data, n, first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    #[test]
    fn equals_dot() {
        for (inp, out) in [(7, 5), (33, 16), (20, 40)] {
            let m = Array2::from_shape_fn((inp, out), |(i, j)| (i * 3 + j) as f32 / 7.0 - 1.0);
            let x = Array1::from_shape_fn(inp, |i| i as f32 / 3.0 - 0.5);
            let mut y = Array1::zeros(out);
            vec_mat_into(x.view(), m.view(), y.view_mut());
            let want = x.dot(&m);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4);
            }
            // The plain block equals the dispatched one bit for bit.
            if out >= COLUMN_BLOCK {
                let mut block = [0.0f32; COLUMN_BLOCK];
                column_block(x.view(), m.view(), 0, &mut block);
                let plain = whole_block(x.as_slice().unwrap(), m.as_slice().unwrap(), out, 0);
                assert_eq!(block, plain);
            }
            // A transposed (column-major) matrix gives the same bits.
            let mt = m.t().as_standard_layout().into_owned();
            let mut yt = Array1::zeros(out);
            vec_mat_into(x.view(), mt.t(), yt.view_mut());
            assert_eq!(yt, y);
        }
    }
}
