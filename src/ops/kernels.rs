//! Dot products of f32 activations with f32, f16 or bf16 weights: the inner loop of every
//! matrix-vector product.
//!
//! On x86-64 CPUs with AVX2, FMA and F16C (checked at run time) the work is done 8 lanes at a
//! time with several independent accumulators; elsewhere a plain loop is used. Each weight row is
//! read once for up to [`GROUP`] activation vectors, so a batch of `B` tokens reads the weights
//! `⌈B / GROUP⌉` times from cache and once from memory. Where the CPU also has AVX-512F, products
//! take two weight rows at a time, 16 lanes wide, so that each activation loaded serves both
//! rows, with the weights asked for ahead. From how many vectors the AVX-512 kernels take over
//! is [`Cpu::avx512_min_vectors`] (five on AMD Zen 4, whose AVX-512 runs in 256-bit halves and
//! where the one-row AVX2 loops stream faster for fewer; one elsewhere).
//!
//! Also here: [`wkv_step`], one token of RWKV-5/6's WKV state update, compiled for AVX2 where
//! the CPU has it.

use super::simd::{Cpu, Element};
use half::{bf16, f16};

/// Activation vectors served by one pass over a weight row.
pub const GROUP: usize = 8;

/// A weight element type the dot-product kernels read: f32, f16 and bf16 (sealed through
/// [`Element`]). Each call runs on the instruction set of the [`Cpu`] it is given, chosen once
/// by the matrix that holds the weights.
pub(crate) trait Dot: Element {
    /// `out[j] = Σ_i w[i] · xs[j][i]` for every `j` (at most [`GROUP`] vectors).
    ///
    /// # Panics
    /// If a vector's length differs from `w.len()`, or `xs.len() > GROUP`, or
    /// `out.len() != xs.len()`.
    #[cfg(test)]
    fn dots(cpu: Cpu, w: &[Self], xs: &[&[f32]], out: &mut [f32]);

    /// `out[r·B + j] = Σ_i w[r·n + i] · xs[j][i]` for the consecutive rows `r` of a row-major
    /// `w` (`n` = the vectors' length, `B = xs.len()`): a product of a block of rows with up
    /// to [`MAX_VECTORS`] vectors, each row through [`Dot::dots`]' loops, [`GROUP`] vectors at
    /// a time.
    ///
    /// # Panics
    /// If the vectors differ in length, `w.len()` is not a whole number of rows, there are
    /// more than [`MAX_VECTORS`] vectors, or `out.len()` is not rows × `B`.
    fn row_dots(cpu: Cpu, w: &[Self], xs: &[&[f32]], out: &mut [f32]);
}

/// Vectors [`Dot::row_dots`] takes at most.
pub const MAX_VECTORS: usize = 16;

/// The number of rows, after checking the shapes of a [`Dot::row_dots`] call.
#[track_caller]
fn check_rows(w: usize, xs: &[&[f32]], out: usize) -> usize {
    assert!(
        xs.len() <= MAX_VECTORS,
        "kernels: at most {MAX_VECTORS} vectors"
    );
    let n = xs.first().map_or(0, |x| x.len());
    assert!(
        xs.iter().all(|x| x.len() == n),
        "kernels: vectors of different lengths"
    );
    let rows = w.checked_div(n).unwrap_or(out / xs.len().max(1));
    assert_eq!(w, rows * n, "kernels: a whole number of weight rows");
    assert_eq!(
        out,
        rows * xs.len(),
        "kernels: one output per row and vector"
    );
    rows
}

/// The portable [`Dot::row_dots`].
fn row_dots_plain<T: Element>(w: &[T], xs: &[&[f32]], rows: usize, out: &mut [f32]) {
    let b = xs.len();
    let n = xs.first().map_or(0, |x| x.len());
    for r in 0..rows {
        for (g, group) in xs.chunks(GROUP).enumerate() {
            let o = &mut out[r * b + g * GROUP..][..group.len()];
            dots_plain(&w[r * n..(r + 1) * n], group, o);
        }
    }
}

#[cfg(test)]
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
fn dots_plain<T: Element>(w: &[T], xs: &[&[f32]], out: &mut [f32]) {
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

/// Implements [`Dot`] for `$t` over the AVX2 kernels `$dots` and `$rows` and the AVX-512
/// kernel `$rows`, with the portable loops as the fallback.
macro_rules! dot_impl {
    ($t:ty, $dots:ident, $rows:ident) => {
        impl Dot for $t {
            #[cfg(test)]
            #[track_caller]
            fn dots(cpu: Cpu, w: &[$t], xs: &[&[f32]], out: &mut [f32]) {
                check(w.len(), xs, out);
                #[cfg(target_arch = "x86_64")]
                if cpu.has_avx2() {
                    // SAFETY: the CPU has AVX2, FMA and F16C (a `Cpu` says so only when
                    // detected); lengths checked by `check`.
                    unsafe { avx2::$dots(w, xs, out) };
                    return;
                }
                let _ = cpu;
                dots_plain(w, xs, out);
            }

            #[track_caller]
            fn row_dots(cpu: Cpu, w: &[$t], xs: &[&[f32]], out: &mut [f32]) {
                let rows = check_rows(w.len(), xs, out.len());
                #[cfg(target_arch = "x86_64")]
                if cpu.has_avx512() && xs.len() >= cpu.avx512_min_vectors() {
                    // SAFETY: the CPU has AVX-512F (a `Cpu` says so only when detected);
                    // shapes checked above.
                    unsafe { avx512::$rows(w, xs, rows, out) };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if cpu.has_avx2() {
                    // SAFETY: the CPU has AVX2, FMA and F16C (a `Cpu` says so only when
                    // detected); shapes checked above.
                    unsafe { avx2::$rows(w, xs, rows, out) };
                    return;
                }
                let _ = cpu;
                row_dots_plain(w, xs, rows, out);
            }
        }
    };
}

dot_impl!(f32, dots_f32, row_dots_f32);
dot_impl!(f16, dots_f16, row_dots_f16);
dot_impl!(bf16, dots_bf16, row_dots_bf16);

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::GROUP;
    use crate::ops::simd::avx2::{load_bf16, load_f16, load_f32};
    use crate::ops::simd::Element;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// How far ahead the kernels for several vectors ask for weights: with several
    /// multiply-adds per weight the hardware prefetcher alone falls behind. The one-vector loop
    /// asks for none (docs/performance.md).
    const PREFETCH_BYTES: usize = 2048;

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
            /// The CPU must have AVX2, FMA and F16C; the shapes must be as
            /// [`Dot::row_dots`] checks them (`rows` rows of `w`).
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $rows(w: &[$t], xs: &[&[f32]], rows: usize, out: &mut [f32]) {
                let b = xs.len();
                let n = xs.first().map_or(0, |x| x.len());
                let row = |r: usize| &w[r * n..(r + 1) * n];
                if b == 1 {
                    for (r, o) in out.iter_mut().enumerate() {
                        // SAFETY: forwarded from the caller; the slice is in bounds.
                        *o = unsafe { $dots_1(row(r), xs[0]) };
                    }
                    return;
                }
                for r in 0..rows {
                    for (g, group) in xs.chunks(GROUP).enumerate() {
                        let o = &mut out[r * b + g * GROUP..][..group.len()];
                        // SAFETY: forwarded from the caller; at most GROUP vectors.
                        unsafe { $dots(row(r), group, o) };
                    }
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
                    // A hint for the weights ahead, as in the wide kernel below.
                    _mm_prefetch(
                        wp.wrapping_add(i + PREFETCH_BYTES / std::mem::size_of::<$t>())
                            as *const i8,
                        _MM_HINT_T0,
                    );
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
                    // A hint for the weights `PREFETCH_BYTES` ahead (into the next row at the
                    // end: rows are consecutive); a prefetch never faults, whatever the address.
                    _mm_prefetch(
                        wp.wrapping_add(i + PREFETCH_BYTES / std::mem::size_of::<$t>())
                            as *const i8,
                        _MM_HINT_T0,
                    );
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

/// Products of a block of rows with several vectors on CPUs with AVX-512: 16 lanes, and 32
/// registers, enough to keep [`ROWS`] weight rows × [`GROUP`] vectors of accumulators in
/// registers, so that each activation loaded serves every row of the block (with AVX2 each
/// weight row takes its own pass over the activations, which then come from L2 as often as
/// from L1). One vector takes a loop of its own, one row at a time with four accumulators.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::GROUP;
    use crate::ops::simd::avx512::{load_bf16, load_f16, load_f32};
    use crate::ops::simd::Element;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Weight rows per block (two rows × eight vectors of accumulators: 16 of the 32
    /// registers; three rows made the compiler spill them).
    const ROWS: usize = 2;

    /// How far ahead each row's weights are asked for: at least 4 KiB, and at least the next
    /// block's row, so that a block of long rows does not start on weights nobody asked for
    /// (docs/performance.md).
    const PREFETCH_BYTES: usize = 4096;

    /// How far ahead the one-vector loop asks for half-precision weights. A half-precision
    /// cache line takes three times the instructions of an f32 one (two widenings, two FMAs),
    /// so the core's out-of-order window reaches fewer lines ahead and the stream from memory
    /// slows without hints. f32 rows, which the core streams fast enough alone, get none
    /// (docs/performance.md).
    const HALF_PREFETCH_BYTES: usize = 8192;

    /// Defines `$rows`, [`Dot::row_dots`] for `$t` weights loaded by `$load`, over
    /// `$block`, its body for `R` consecutive rows and exactly `M` vectors.
    macro_rules! rows_for {
        ($rows:ident, $block:ident, $t:ty, $load:ident) => {
            /// # Safety
            /// The CPU must have AVX-512F; the shapes must be as [`Dot::row_dots`] checks
            /// them (`rows` rows of `w`).
            #[target_feature(enable = "avx512f")]
            pub unsafe fn $rows(w: &[$t], xs: &[&[f32]], rows: usize, out: &mut [f32]) {
                let b = xs.len();
                if b == 1 {
                    let n = xs[0].len();
                    for (r, o) in out.iter_mut().enumerate() {
                        // SAFETY: forwarded from the caller; row r exists.
                        *o = unsafe { one_row(&w[r * n..(r + 1) * n], xs[0]) };
                    }
                    return;
                }

                /// `w · x` with four independent accumulators (64 weights per iteration),
                /// so that the FMA latency does not bound the product, and half-precision
                /// weights asked for [`HALF_PREFETCH_BYTES`] ahead.
                ///
                /// # Safety
                /// The CPU must have AVX-512F; `x` must be as long as `w`.
                #[target_feature(enable = "avx512f")]
                unsafe fn one_row(w: &[$t], x: &[f32]) -> f32 {
                    let n = w.len();
                    let mut acc = [_mm512_setzero_ps(); 4];
                    let (wp, xp) = (w.as_ptr(), x.as_ptr());
                    let size = std::mem::size_of::<$t>();
                    let ahead = if size < 4 {
                        HALF_PREFETCH_BYTES / size
                    } else {
                        0
                    };
                    let mut i = 0;
                    while i + 64 <= n {
                        if ahead > 0 {
                            // One hint per cache line of the 64 weights; a prefetch never
                            // faults, whatever the address.
                            for line in 0..size {
                                let at = i + ahead + line * 64 / size;
                                _mm_prefetch(wp.wrapping_add(at) as *const i8, _MM_HINT_T0);
                            }
                        }
                        for (u, a) in acc.iter_mut().enumerate() {
                            // SAFETY: i + 64 <= n: 64 weights and activations are readable
                            // at i.
                            unsafe {
                                let at = i + 16 * u;
                                let x = _mm512_loadu_ps(xp.add(at));
                                *a = _mm512_fmadd_ps($load(wp.add(at)), x, *a);
                            }
                        }
                        i += 64;
                    }
                    while i + 16 <= n {
                        // SAFETY: i + 16 <= n.
                        unsafe {
                            let x = _mm512_loadu_ps(xp.add(i));
                            acc[0] = _mm512_fmadd_ps($load(wp.add(i)), x, acc[0]);
                        }
                        i += 16;
                    }
                    let pairs = [_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])];
                    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(pairs[0], pairs[1]));
                    for k in i..n {
                        s += w[k].widen() * x[k];
                    }
                    s
                }

                let mut r = 0;
                while r < rows {
                    let take = if rows - r >= ROWS { ROWS } else { 1 };
                    for (g, group) in xs.chunks(GROUP).enumerate() {
                        let at = (r, g * GROUP, b);
                        // SAFETY: forwarded from the caller; rows r..r + take exist, at most
                        // GROUP vectors.
                        unsafe {
                            if take == ROWS {
                                $block::<ROWS>(w, group, at, out)
                            } else {
                                $block::<1>(w, group, at, out)
                            }
                        }
                    }
                    r += take;
                }
            }

            /// `R` rows from `r` times the vectors of `group`, into `out[(r + k) · b + col + j]`.
            ///
            /// # Safety
            /// The CPU must have AVX-512F; rows `r..r + R` of `w` must exist; at most [`GROUP`]
            /// vectors, each one row long.
            #[target_feature(enable = "avx512f")]
            unsafe fn $block<const R: usize>(
                w: &[$t],
                group: &[&[f32]],
                at: (usize, usize, usize),
                out: &mut [f32],
            ) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match *group {
                        [a] => body::<R, 1>(w, [a], at, out),
                        [a, b] => body::<R, 2>(w, [a, b], at, out),
                        [a, b, c] => body::<R, 3>(w, [a, b, c], at, out),
                        [a, b, c, d] => body::<R, 4>(w, [a, b, c, d], at, out),
                        [a, b, c, d, e] => body::<R, 5>(w, [a, b, c, d, e], at, out),
                        [a, b, c, d, e, f] => body::<R, 6>(w, [a, b, c, d, e, f], at, out),
                        [a, b, c, d, e, f, g] => body::<R, 7>(w, [a, b, c, d, e, f, g], at, out),
                        [a, b, c, d, e, f, g, h] => {
                            body::<R, 8>(w, [a, b, c, d, e, f, g, h], at, out)
                        }
                        _ => unreachable!("1 to GROUP vectors"),
                    }
                }

                /// # Safety
                /// As for the enclosing function.
                #[target_feature(enable = "avx512f")]
                unsafe fn body<const R: usize, const M: usize>(
                    w: &[$t],
                    xs: [&[f32]; M],
                    (r, col, b): (usize, usize, usize),
                    out: &mut [f32],
                ) {
                    let n = xs[0].len();
                    let row = |k: usize| &w[(r + k) * n..(r + k + 1) * n];
                    let wp: [*const $t; R] = std::array::from_fn(|k| row(k).as_ptr());
                    let xp = xs.map(|x| x.as_ptr());
                    let mut acc = [[_mm512_setzero_ps(); M]; R];
                    let ahead = (R * n).max(PREFETCH_BYTES / std::mem::size_of::<$t>());
                    let mut i = 0;
                    while i + 16 <= n {
                        // SAFETY: i + 16 <= n: 16 weights of each row and 16 activations of
                        // each vector are readable at i. A prefetch never faults.
                        unsafe {
                            let mut wv = [_mm512_setzero_ps(); R];
                            for k in 0..R {
                                _mm_prefetch(
                                    wp[k].wrapping_add(i + ahead) as *const i8,
                                    _MM_HINT_T0,
                                );
                                wv[k] = $load(wp[k].add(i));
                            }
                            for j in 0..M {
                                let x = _mm512_loadu_ps(xp[j].add(i));
                                for k in 0..R {
                                    acc[k][j] = _mm512_fmadd_ps(wv[k], x, acc[k][j]);
                                }
                            }
                        }
                        i += 16;
                    }
                    for k in 0..R {
                        for j in 0..M {
                            let mut s = _mm512_reduce_add_ps(acc[k][j]);
                            for t in i..n {
                                s += row(k)[t].widen() * xs[j][t];
                            }
                            out[(r + k) * b + col + j] = s;
                        }
                    }
                }
            }
        };
    }

    rows_for!(row_dots_f32, block_f32, f32, load_f32);
    rows_for!(row_dots_f16, block_f16, f16, load_f16);
    rows_for!(row_dots_bf16, block_bf16, bf16, load_bf16);
}

/// One token of RWKV-5/6's WKV for every head: per head `h` (columns `h·n..(h+1)·n`),
/// `y_j = Σ_i r_i (u_i k_i v_j + S_ij)`, then `S_ij ← w_i S_ij + k_i v_j`, with `state` holding
/// the heads' `[n, n]` matrices `[key, value]` one after another. The same operations in the
/// same order on every CPU (8 lanes at a time with AVX2, no fused multiply-add), so the result
/// does not depend on the instruction set.
///
/// # Panics
/// If a vector's length differs from `y.len()`, which must be a multiple of `n`, or `state` is
/// not `y.len() · n` long.
#[track_caller]
pub fn wkv_step([r, k, v, w, u]: [&[f32]; 5], n: usize, state: &mut [f32], y: &mut [f32]) {
    let c = y.len();
    assert!(
        n > 0 && c.is_multiple_of(n),
        "wkv_step: width is not a multiple of the head size"
    );
    for x in [r, k, v, w, u] {
        assert_eq!(x.len(), c, "wkv_step: input length");
    }
    assert_eq!(state.len(), c * n, "wkv_step: state length");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above); the body has no other requirement.
        unsafe { wkv_step_avx2([r, k, v, w, u], n, state, y) };
        return;
    }
    wkv_step_body([r, k, v, w, u], n, state, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn wkv_step_avx2(x: [&[f32]; 5], n: usize, state: &mut [f32], y: &mut [f32]) {
    wkv_step_body(x, n, state, y);
}

#[inline(always)]
fn wkv_step_body([r, k, v, w, u]: [&[f32]; 5], n: usize, state: &mut [f32], y: &mut [f32]) {
    y.fill(0.0);
    for (head, sh) in state.chunks_exact_mut(n * n).enumerate() {
        let cols = head * n..(head + 1) * n;
        let (yh, vh) = (&mut y[cols.clone()], &v[cols]);
        for (i, row) in sh.chunks_exact_mut(n).enumerate() {
            let c = head * n + i;
            let (ri, ki, wi) = (r[c], k[c], w[c]);
            let rk_u = ri * u[c] * ki;
            for ((y, s), &v) in yh.iter_mut().zip(row.iter_mut()).zip(vh) {
                *y += rk_u * v + ri * *s;
                *s = *s * wi + ki * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wkv_step_equals_the_plain_loop_bit_for_bit() {
        let (h, n) = (3, 20);
        let c = h * n;
        let vec = |seed: usize| -> Vec<f32> {
            (0..c)
                .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 8.0 - 1.0)
                .collect()
        };
        let (r, k, v, u) = (vec(1), vec(2), vec(3), vec(4));
        let w: Vec<f32> = (0..c).map(|i| 0.5 + (i % 5) as f32 / 10.0).collect();
        let start: Vec<f32> = (0..c * n)
            .map(|i| ((i * 3) % 11) as f32 / 5.0 - 1.0)
            .collect();
        let (mut s1, mut s2) = (start.clone(), start);
        let (mut y1, mut y2) = (vec![0.0; c], vec![0.0; c]);
        for _ in 0..3 {
            wkv_step([&r, &k, &v, &w, &u], n, &mut s1, &mut y1);
            wkv_step_body([&r, &k, &v, &w, &u], n, &mut s2, &mut y2);
            assert_eq!(y1, y2);
            assert_eq!(s1, s2);
        }
    }

    fn reference<T: Element>(w: &[T], x: &[f32]) -> f64 {
        w.iter()
            .zip(x)
            .map(|(a, b)| a.widen() as f64 * *b as f64)
            .sum()
    }

    /// A row kernel of one instruction set, for the CPUs that have it.
    type RowKernel<T> = unsafe fn(&[T], &[&[f32]], usize, &mut [f32]);

    /// The row kernels this CPU can run, besides [`Dot::row_dots`]' own choice.
    #[cfg(target_arch = "x86_64")]
    fn kernels<T>(avx2: RowKernel<T>, avx512: RowKernel<T>) -> Vec<(&'static str, RowKernel<T>)> {
        let mut all = Vec::new();
        if Cpu::detect().has_avx2() {
            all.push(("avx2", avx2));
        }
        if Cpu::detect().has_avx512() {
            all.push(("avx512", avx512));
        }
        all
    }

    fn check_type<T: Dot>(from: fn(f32) -> T, kernels: &[(&str, RowKernel<T>)]) {
        // Lengths around every boundary of the 64-, 32-, 16- and 8-wide loops.
        for n in [
            0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 79, 80, 81, 100, 127, 128, 129,
            768, 1000,
        ] {
            let w: Vec<T> = (0..n)
                .map(|i| from(((i * 37 % 101) as f32 - 50.0) / 25.0))
                .collect();
            let xs16: Vec<Vec<f32>> = (0..MAX_VECTORS)
                .map(|j| {
                    (0..n)
                        .map(|i| ((i * 13 + j * 7) % 17) as f32 / 8.0 - 1.0)
                        .collect()
                })
                .collect();
            let xs = &xs16[..GROUP];
            // Blocks of 1 to 7 rows (the AVX-512 kernels' blocks of two and one) times 1 to 16
            // vectors (whole groups and the rest), rows cut from `w` at other offsets.
            let shifted = |k: usize| -> Vec<T> { (0..n).map(|i| w[(i + k) % n.max(1)]).collect() };
            for rows in 1..=7 {
                let block: Vec<T> = (0..rows).flat_map(shifted).collect();
                for b in [1, 2, 3, 4, 5, 8, 9, MAX_VECTORS] {
                    let views: Vec<&[f32]> = xs16[..b].iter().map(Vec::as_slice).collect();
                    let mut results = Vec::new();
                    for cpu in Cpu::detect().variants() {
                        let mut out = vec![0.0f32; rows * b];
                        T::row_dots(cpu, &block, &views, &mut out);
                        results.push((format!("row_dots {cpu:?}"), out));
                    }
                    let mut plain = vec![0.0f32; rows * b];
                    row_dots_plain(&block, &views, rows, &mut plain);
                    results.push(("plain".to_string(), plain));
                    for &(name, kernel) in kernels {
                        let mut out = vec![0.0f32; rows * b];
                        // SAFETY: `kernels` lists only what this CPU runs; shapes as
                        // `row_dots` checks them.
                        unsafe { kernel(&block, &views, rows, &mut out) };
                        if b == 1 && name == "avx2" {
                            // One vector: the one-vector loop of `dots`, bit for bit.
                            let mut one = [0.0f32];
                            T::dots(Cpu::detect(), &shifted(rows - 1), &views, &mut one);
                            assert_eq!(out[rows - 1], one[0], "avx2 n={n} rows={rows}");
                        }
                        results.push((name.to_string(), out));
                    }
                    for r in 0..rows {
                        for j in 0..b {
                            let want = reference(&shifted(r), &xs16[j]);
                            let tol = 1e-5 * (1.0 + want.abs()) * (n as f64).sqrt().max(1.0);
                            for (what, got) in &results {
                                let got = got[r * b + j];
                                assert!(
                                    (got as f64 - want).abs() <= tol,
                                    "{what} n={n} rows={rows} b={b} r={r} j={j}"
                                );
                            }
                        }
                    }
                }
            }
            for m in 1..=GROUP {
                let views: Vec<&[f32]> = xs[..m].iter().map(Vec::as_slice).collect();
                let mut out = vec![0.0; m];
                T::dots(Cpu::detect(), &w, &views, &mut out);
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
        check_type::<f32>(
            |v| v,
            #[cfg(target_arch = "x86_64")]
            &kernels(avx2::row_dots_f32, avx512::row_dots_f32),
            #[cfg(not(target_arch = "x86_64"))]
            &[],
        );
    }

    #[test]
    fn f16_kernel_matches_reference() {
        check_type::<f16>(
            f16::from_f32,
            #[cfg(target_arch = "x86_64")]
            &kernels(avx2::row_dots_f16, avx512::row_dots_f16),
            #[cfg(not(target_arch = "x86_64"))]
            &[],
        );
    }

    #[test]
    fn bf16_kernel_matches_reference() {
        check_type::<bf16>(
            bf16::from_f32,
            #[cfg(target_arch = "x86_64")]
            &kernels(avx2::row_dots_bf16, avx512::row_dots_bf16),
            #[cfg(not(target_arch = "x86_64"))]
            &[],
        );
    }

    /// The same bits wherever the weights and the vectors start: on a cache line (as the
    /// loaders and the team put them) or off it (the team's lead and its helpers may hold
    /// their inputs at different offsets, and must agree).
    #[test]
    fn results_do_not_depend_on_alignment() {
        fn check<T: Dot>(from: fn(f32) -> T) {
            let (rows, n) = (5, 200);
            let w: Vec<T> = (0..rows * n)
                .map(|i| from(((i * 37 % 101) as f32 - 50.0) / 25.0))
                .collect();
            let x: Vec<f32> = (0..3 * n)
                .map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0)
                .collect();
            // `values` placed `offset` elements past a cache line.
            fn at<T: Copy + Default>(values: &[T], offset: usize) -> ndarray::Array1<T> {
                let padding = std::iter::repeat_n(T::default(), offset);
                let all = padding.chain(values.iter().copied());
                super::super::aligned::collect(offset + values.len(), all)
            }
            for b in [1, 2, 3] {
                let run = |wo: usize, xo: usize| {
                    let (wa, xa) = (at(&w, wo), at(&x, xo));
                    let w = &wa.as_slice().unwrap()[wo..];
                    let x = &xa.as_slice().unwrap()[xo..];
                    let views: Vec<&[f32]> = (0..b).map(|j| &x[j * n..(j + 1) * n]).collect();
                    let mut out = vec![0.0f32; rows * b];
                    T::row_dots(Cpu::detect(), w, &views, &mut out);
                    out
                };
                let on_line = run(0, 0);
                for (wo, xo) in [(1, 0), (0, 1), (8, 4), (3, 5), (16, 16)] {
                    assert_eq!(run(wo, xo), on_line, "b={b} offsets {wo}, {xo}");
                }
            }
        }
        check::<f32>(|v| v);
        check::<f16>(f16::from_f32);
        check::<bf16>(bf16::from_f32);
    }
}
