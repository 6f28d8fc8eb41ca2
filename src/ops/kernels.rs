//! Dot products of f32 activations with f32, f16 or bf16 weights: the inner loop of every
//! matrix-vector product.
//!
//! On x86-64 CPUs with AVX2, FMA and F16C (checked at run time) the work is done 8 lanes at a
//! time with several independent accumulators; elsewhere a plain loop is used. Each weight row is
//! read once for up to [`GROUP`] activation vectors, so a batch of `B` tokens reads the weights
//! `⌈B / GROUP⌉` times from cache and once from memory.

use half::{bf16, f16};

/// Activation vectors served by one pass over a weight row.
pub const GROUP: usize = 8;

/// A weight element type the kernels read.
pub trait Weight: Copy + Send + Sync + 'static {
    /// The value as f32.
    fn widen(self) -> f32;

    /// `out[j] = Σ_i w[i] · xs[j][i]` for every `j` (at most [`GROUP`] vectors).
    ///
    /// # Panics
    /// If a vector's length differs from `w.len()`, or `xs.len() > GROUP`, or
    /// `out.len() != xs.len()`.
    fn dots(w: &[Self], xs: &[&[f32]], out: &mut [f32]);

    /// `out[r] = Σ_i w[r·n + i] · x[i]` with `n = x.len()`: a matrix-vector product over the
    /// consecutive rows of a row-major `w`, with no per-row dispatch.
    ///
    /// # Panics
    /// If `w.len() != out.len() · x.len()`.
    fn row_dots(w: &[Self], x: &[f32], out: &mut [f32]);
}

#[track_caller]
fn check_rows(w: usize, x: usize, out: usize) {
    assert_eq!(
        w,
        out * x,
        "kernels: one weight row of the input's length per output"
    );
}

/// The portable [`Weight::row_dots`].
fn row_dots_plain<T: Weight>(w: &[T], x: &[f32], out: &mut [f32]) {
    for (row, o) in w.chunks_exact(x.len().max(1)).zip(out.iter_mut()) {
        dots_plain(row, &[x], std::slice::from_mut(o));
    }
}

#[track_caller]
fn check(n: usize, xs: &[&[f32]], out: &[f32]) {
    assert!(
        xs.len() <= GROUP,
        "kernels: at most {GROUP} vectors per pass"
    );
    assert_eq!(xs.len(), out.len(), "kernels: one output per vector");
    for x in xs {
        assert_eq!(
            x.len(),
            n,
            "kernels: vector length differs from the weight row"
        );
    }
}

/// The portable kernel: `out[j] = Σ_i widen(w[i]) · xs[j][i]`, 8 partial sums per vector so the
/// compiler can vectorise it.
fn dots_plain<T: Weight>(w: &[T], xs: &[&[f32]], out: &mut [f32]) {
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        let mut acc = [0.0f32; 8];
        let chunks = w.len() / 8 * 8;
        for (wc, xc) in w[..chunks].chunks_exact(8).zip(x[..chunks].chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += wc[l].widen() * xc[l];
            }
        }
        let tail: f32 = w[chunks..]
            .iter()
            .zip(&x[chunks..])
            .map(|(a, b)| a.widen() * b)
            .sum();
        *o = acc.iter().sum::<f32>() + tail;
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma_f16c() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

impl Weight for f32 {
    fn widen(self) -> f32 {
        self
    }

    #[track_caller]
    fn dots(w: &[f32], xs: &[&[f32]], out: &mut [f32]) {
        check(w.len(), xs, out);
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above); lengths checked by `check`.
            unsafe { avx2::dots_f32(w, xs, out) };
            return;
        }
        dots_plain(w, xs, out);
    }

    #[track_caller]
    fn row_dots(w: &[f32], x: &[f32], out: &mut [f32]) {
        check_rows(w.len(), x.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above); lengths checked above.
            unsafe { avx2::row_dots_f32(w, x, out) };
            return;
        }
        row_dots_plain(w, x, out);
    }
}

impl Weight for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }

    #[track_caller]
    fn dots(w: &[f16], xs: &[&[f32]], out: &mut [f32]) {
        check(w.len(), xs, out);
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above); lengths checked by `check`.
            unsafe { avx2::dots_f16(w, xs, out) };
            return;
        }
        dots_plain(w, xs, out);
    }

    #[track_caller]
    fn row_dots(w: &[f16], x: &[f32], out: &mut [f32]) {
        check_rows(w.len(), x.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above); lengths checked above.
            unsafe { avx2::row_dots_f16(w, x, out) };
            return;
        }
        row_dots_plain(w, x, out);
    }
}

impl Weight for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }

    #[track_caller]
    fn dots(w: &[bf16], xs: &[&[f32]], out: &mut [f32]) {
        check(w.len(), xs, out);
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above); lengths checked by `check`.
            unsafe { avx2::dots_bf16(w, xs, out) };
            return;
        }
        dots_plain(w, xs, out);
    }

    #[track_caller]
    fn row_dots(w: &[bf16], x: &[f32], out: &mut [f32]) {
        check_rows(w.len(), x.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above); lengths checked above.
            unsafe { avx2::row_dots_bf16(w, x, out) };
            return;
        }
        row_dots_plain(w, x, out);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Weight, GROUP};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// # Safety
    /// `p` must point to 8 readable f32; the CPU must have AVX.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable values at `p`; loadu has no alignment need.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// # Safety
    /// `p` must point to 8 readable f16; the CPU must have F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        // SAFETY: 8 f16 = 16 readable bytes at `p` (caller); loadu has no alignment need.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// # Safety
    /// `p` must point to 8 readable bf16; the CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_bf16(p: *const bf16) -> __m256 {
        // SAFETY: 8 bf16 = 16 readable bytes at `p` (caller). A bf16 is the top half of an f32.
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Defines `$dots`, `out[j] = Σ_i w[i] · xs[j][i]` for up to [`GROUP`] vectors of `$t`
    /// weights loaded by `$load`, and `$dots_m`, its body for exactly `M` vectors: one pass over
    /// `w`, two accumulators per vector (16 weights per iteration) kept in registers, a scalar
    /// tail. One function per weight type, so the load is inlined.
    macro_rules! dots_for {
        (
            $dots:ident,
            $dots_m:ident,
            $dots_1:ident,
            $dots_wide:ident,
            $rows:ident,
            $t:ty,
            $load:ident
        ) => {
            /// # Safety
            /// The CPU must have AVX2, FMA and F16C; `w.len()` must be `out.len() · x.len()`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $rows(w: &[$t], x: &[f32], out: &mut [f32]) {
                let n = x.len();
                for (r, o) in out.iter_mut().enumerate() {
                    // SAFETY: forwarded from the caller; the slice is in bounds (checked).
                    *o = unsafe { $dots_1(&w[r * n..(r + 1) * n], x) };
                }
            }

            /// # Safety
            /// The CPU must have AVX2, FMA and F16C; every `xs[j]` must be as long as `w`.
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $dots_m<const M: usize>(w: &[$t], xs: [&[f32]; M], out: &mut [f32]) {
                let n = w.len();
                let mut acc0 = [_mm256_setzero_ps(); M];
                let mut acc1 = [_mm256_setzero_ps(); M];
                let wp = w.as_ptr();
                let xp = xs.map(|x| x.as_ptr());
                let mut i = 0;
                while i + 16 <= n {
                    // SAFETY: i + 16 <= n: 16 weights and 16 activations are readable at i.
                    unsafe {
                        let w0 = $load(wp.add(i));
                        let w1 = $load(wp.add(i + 8));
                        for j in 0..M {
                            acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[j].add(i)), acc0[j]);
                            acc1[j] =
                                _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp[j].add(i + 8)), acc1[j]);
                        }
                    }
                    i += 16;
                }
                if i + 8 <= n {
                    // SAFETY: i + 8 <= n.
                    unsafe {
                        let w0 = $load(wp.add(i));
                        for j in 0..M {
                            acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[j].add(i)), acc0[j]);
                        }
                    }
                    i += 8;
                }
                for j in 0..M {
                    let mut s = hsum(_mm256_add_ps(acc0[j], acc1[j]));
                    for k in i..n {
                        s += w[k].widen() * xs[j][k];
                    }
                    out[j] = s;
                }
            }

            /// `M` (5 to 8) vectors: one accumulator each (8 weights per iteration), which keeps
            /// every accumulator in a register.
            ///
            /// # Safety
            /// The CPU must have AVX2, FMA and F16C; every `xs[j]` must be as long as `w`.
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $dots_wide<const M: usize>(w: &[$t], xs: [&[f32]; M], out: &mut [f32]) {
                let n = w.len();
                let mut acc = [_mm256_setzero_ps(); M];
                let wp = w.as_ptr();
                let xp = xs.map(|x| x.as_ptr());
                let mut i = 0;
                while i + 8 <= n {
                    // SAFETY: i + 8 <= n: 8 weights and 8 activations are readable at i.
                    unsafe {
                        let w0 = $load(wp.add(i));
                        for j in 0..M {
                            acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[j].add(i)), acc[j]);
                        }
                    }
                    i += 8;
                }
                for j in 0..M {
                    let mut s = hsum(acc[j]);
                    for k in i..n {
                        s += w[k].widen() * xs[j][k];
                    }
                    out[j] = s;
                }
            }

            /// One vector: four independent accumulators (32 weights per iteration), so the
            /// FMA latency does not bound a single dot product.
            ///
            /// # Safety
            /// The CPU must have AVX2, FMA and F16C; `x` must be as long as `w`.
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $dots_1(w: &[$t], x: &[f32]) -> f32 {
                let n = w.len();
                let mut acc = [_mm256_setzero_ps(); 4];
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let mut i = 0;
                while i + 32 <= n {
                    for (u, a) in acc.iter_mut().enumerate() {
                        // SAFETY: i + 32 <= n: 32 weights and activations are readable at i.
                        unsafe {
                            let at = i + 8 * u;
                            *a =
                                _mm256_fmadd_ps($load(wp.add(at)), _mm256_loadu_ps(xp.add(at)), *a);
                        }
                    }
                    i += 32;
                }
                while i + 8 <= n {
                    // SAFETY: i + 8 <= n.
                    unsafe {
                        acc[0] =
                            _mm256_fmadd_ps($load(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
                    }
                    i += 8;
                }
                let sum =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let mut s = hsum(sum);
                for k in i..n {
                    s += w[k].widen() * x[k];
                }
                s
            }

            /// # Safety
            /// The CPU must have AVX2, FMA and F16C; every `xs[j]` must be as long as `w`, with
            /// `xs.len() <= GROUP` and `out.len() == xs.len()`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $dots(w: &[$t], xs: &[&[f32]], out: &mut [f32]) {
                debug_assert!(xs.len() <= GROUP);
                // SAFETY: forwarded from the caller.
                unsafe {
                    match *xs {
                        [] => {}
                        [a] => out[0] = $dots_1(w, a),
                        [a, b] => $dots_m(w, [a, b], out),
                        [a, b, c] => $dots_m(w, [a, b, c], out),
                        [a, b, c, d] => $dots_m(w, [a, b, c, d], out),
                        [a, b, c, d, e] => $dots_wide(w, [a, b, c, d, e], out),
                        [a, b, c, d, e, f] => $dots_wide(w, [a, b, c, d, e, f], out),
                        [a, b, c, d, e, f, g] => $dots_wide(w, [a, b, c, d, e, f, g], out),
                        [a, b, c, d, e, f, g, h] => $dots_wide(w, [a, b, c, d, e, f, g, h], out),
                        _ => unreachable!("at most GROUP vectors"),
                    }
                }
            }
        };
    }

    dots_for!(
        dots_f32,
        dots_m_f32,
        dots_1_f32,
        dots_wide_f32,
        row_dots_f32,
        f32,
        load_f32
    );
    dots_for!(
        dots_f16,
        dots_m_f16,
        dots_1_f16,
        dots_wide_f16,
        row_dots_f16,
        f16,
        load_f16
    );
    dots_for!(
        dots_bf16,
        dots_m_bf16,
        dots_1_bf16,
        dots_wide_bf16,
        row_dots_bf16,
        bf16,
        load_bf16
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference<T: Weight>(w: &[T], x: &[f32]) -> f64 {
        w.iter()
            .zip(x)
            .map(|(a, b)| a.widen() as f64 * *b as f64)
            .sum()
    }

    fn check_type<T: Weight>(from: fn(f32) -> T) {
        // Lengths around every boundary of the 16- and 8-wide loops.
        for n in [
            0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 100, 768, 1000,
        ] {
            let w: Vec<T> = (0..n)
                .map(|i| from(((i * 37 % 101) as f32 - 50.0) / 25.0))
                .collect();
            let xs: Vec<Vec<f32>> = (0..GROUP)
                .map(|j| {
                    (0..n)
                        .map(|i| ((i * 13 + j * 7) % 17) as f32 / 8.0 - 1.0)
                        .collect()
                })
                .collect();
            // Three rows at once, the second two ragged against the first's data.
            let rows: Vec<T> = w.iter().chain(&w).chain(&w).copied().collect();
            let mut out3 = [0.0f32; 3];
            T::row_dots(&rows, &xs[0], &mut out3);
            let mut one = [0.0f32];
            T::dots(&w, &[&xs[0]], &mut one);
            assert_eq!(out3, [one[0]; 3], "row_dots n={n}");
            let mut plain3 = [0.0f32; 3];
            row_dots_plain(&rows, &xs[0], &mut plain3);
            let r = reference(&w, &xs[0]);
            let tol = 1e-5 * (1.0 + r.abs()) * (n as f64).sqrt().max(1.0);
            assert!(
                plain3.iter().all(|&p| (p as f64 - r).abs() <= tol),
                "plain rows n={n}"
            );
            for m in 1..=GROUP {
                let views: Vec<&[f32]> = xs[..m].iter().map(Vec::as_slice).collect();
                let mut out = vec![0.0; m];
                T::dots(&w, &views, &mut out);
                let mut plain = vec![0.0; m];
                dots_plain(&w, &views, &mut plain);
                for j in 0..m {
                    let r = reference(&w, &xs[j]);
                    let tol = 1e-5 * (1.0 + r.abs()) * (n as f64).sqrt().max(1.0);
                    assert!((out[j] as f64 - r).abs() <= tol, "n={n} m={m} j={j}");
                    assert!(
                        (plain[j] as f64 - r).abs() <= tol,
                        "plain n={n} m={m} j={j}"
                    );
                }
            }
        }
    }

    #[test]
    fn f32_kernel_matches_reference() {
        check_type::<f32>(|v| v);
    }

    #[test]
    fn f16_kernel_matches_reference() {
        check_type::<f16>(f16::from_f32);
    }

    #[test]
    fn bf16_kernel_matches_reference() {
        check_type::<bf16>(bf16::from_f32);
    }
}
