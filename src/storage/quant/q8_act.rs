//! Activation vectors quantized to 8-bit blocks for the integer dot products of
//! [`Q8_0`](super::Q8_0) and [`Q4_0`](super::Q4_0), as llama.cpp quantizes the vector it
//! multiplies with such weights (its `quantize_row_q8_0`): blocks of 32 values, each a scale
//! `d = max|x| / 127` and 32 integers `q = round(x / d)` in `−127..=127`.
//!
//! Unlike llama.cpp's blocks the scale is kept in f32 (not rounded to f16), and each block
//! also keeps the sum of its integers, which the VNNI kernels use to take out the offset of
//! their unsigned operand.

use crate::ops::Cpu;

/// Values per activation block.
pub const Q8_ACT_BLOCK: usize = 32;

/// A vector quantized to 8-bit blocks of [`Q8_ACT_BLOCK`] values: block `b` holds the values
/// `scales()[b] · qs()[32b + i]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Q8Act {
    qs: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

/// `1.5 · 2²³`: adding and subtracting it rounds an f32 of magnitude below 2²² to an integer,
/// ties to even, with plain f32 arithmetic (which the compiler vectorizes).
const ROUNDER: f32 = 12_582_912.0;

impl Q8Act {
    /// `x` (a whole number of blocks long) quantized: per block `d = max|x| / 127`, and
    /// `q = x · (1/d)` rounded to nearest, ties to even (as llama.cpp's x86 code rounds),
    /// kept in `−127..=127`; a block of zeros has `d = 0` and zero integers. NaN values are
    /// left out of `max|x|` and become −127. The same integers on every CPU.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of [`Q8_ACT_BLOCK`].
    #[track_caller]
    pub fn quantize(x: &[f32]) -> Q8Act {
        let mut act = Q8Act::default();
        act.quantize_from(Cpu::detect(), x);
        act
    }

    /// [`Q8Act::quantize`] into this one, reusing its memory, with `cpu`'s instructions.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of [`Q8_ACT_BLOCK`].
    #[track_caller]
    pub fn quantize_from(&mut self, cpu: Cpu, x: &[f32]) {
        assert!(
            x.len().is_multiple_of(Q8_ACT_BLOCK),
            "Q8Act::quantize: {} values are not a whole number of 32-value blocks",
            x.len()
        );
        let blocks = x.len() / Q8_ACT_BLOCK;
        self.qs.resize(x.len(), 0);
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0);
        for (((xb, qb), d), s) in x
            .chunks_exact(Q8_ACT_BLOCK)
            .zip(self.qs.chunks_exact_mut(Q8_ACT_BLOCK))
            .zip(self.scales.iter_mut())
            .zip(self.sums.iter_mut())
        {
            let xb: &[f32; Q8_ACT_BLOCK] = xb.try_into().expect("32 values");
            #[cfg(target_arch = "x86_64")]
            if cpu.has_avx2() {
                // SAFETY: the `Cpu` says this CPU has AVX2, FMA and F16C.
                (*d, *s) = unsafe { avx2::quantize_block(xb, qb.try_into().expect("32")) };
                continue;
            }
            let _ = cpu;
            (*d, *s) = quantize_block(xb, qb);
        }
    }

    /// Values quantized.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// The integers, block after block.
    pub fn qs(&self) -> &[i8] {
        &self.qs
    }

    /// Each block's scale.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Each block's sum of integers.
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }

    /// The values the blocks stand for, `d · q`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(Q8_ACT_BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &d)| q.iter().map(move |&q| d * f32::from(q)))
            .collect()
    }
}

/// One block of [`Q8Act::quantize`]: its scale and the sum of its integers.
#[inline]
fn quantize_block(x: &[f32; Q8_ACT_BLOCK], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut r = [0.0f32; Q8_ACT_BLOCK];
    for (r, &v) in r.iter_mut().zip(x) {
        // Within ±127 before rounding; `max` (not `clamp`) takes a NaN to −127.
        #[allow(clippy::manual_clamp)]
        let v = (v * id).max(-127.0).min(127.0);
        *r = (v + ROUNDER) - ROUNDER;
    }
    let mut sum = 0i32;
    for (q, r) in q.iter_mut().zip(r) {
        *q = r as i8;
        sum += i32::from(*q);
    }
    (d, sum)
}

/// The half-precision float of a block's scale, stored little-endian in its first two bytes.
#[inline]
pub(crate) fn f16_at(block: &[u8]) -> half::f16 {
    half::f16::from_bits(u16::from_le_bytes([block[0], block[1]]))
}

/// The scale of ggml's symmetric reference quantizers (`Q4_0`, `Q5_0`): `max` the value of
/// largest magnitude (the first such), `d = max / −levels` (so `max` gets the lowest integer),
/// `d` stored as f16 in the block's first two bytes. Returns `1/d` in f32 (0 where `d` is 0).
#[inline]
pub(crate) fn symmetric_scale(values: &[f32], levels: f32, block: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in values {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -levels;
    block[..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Checks a block's f16 scale (its first two bytes) is a number: `Err` names it.
pub(crate) fn check_scale(block: &[u8], name: &str) -> Result<(), String> {
    if block.len() < 2 {
        return Err(format!("a {name} block of {} bytes", block.len()));
    }
    let d = f16_at(block);
    if d.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "{name} block scale d is {} (f16 bits {:#06x})",
            if d.is_nan() { "NaN" } else { "infinite" },
            d.to_bits()
        ))
    }
}

/// AVX2 helpers of the integer kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{Q8Act, Q8_ACT_BLOCK};
    use std::arch::x86_64::*;

    /// [`super::quantize_block`] with AVX2, the same integers: `cvtps2dq` rounds to
    /// nearest even as the portable code does, `maxps` with the bound second turns a NaN
    /// into the bound.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_block(x: &[f32; Q8_ACT_BLOCK], q: &mut [i8; 32]) -> (f32, i32) {
        // SAFETY: 32 readable f32 at `x`; loadu has no alignment need.
        let v: [__m256; 4] =
            unsafe { std::array::from_fn(|k| _mm256_loadu_ps(x.as_ptr().add(8 * k))) };
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for v in v {
            // The running maximum second: a NaN leaves it as it is.
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        let amax = _mm_cvtss_f32(h);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let i = v.map(|v| {
            let t = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, id), lo), hi);
            _mm256_cvtps_epi32(t)
        });
        let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        // Packing works within 128-bit halves: the permutation puts the values back in order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: 32 writable bytes at `q`; storeu has no alignment need.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, p) };
        (d, _mm_cvtsi128_si32(s))
    }

    /// `Σ_b d_w(b) · d_x(b) · (Σ lanes(b) + OFFSET · Σa(b))` over the blocks of `row` (`B`
    /// bytes each, the f16 scale first), where `lanes(block, activation integers)` gives a
    /// block's integer products summed into eight i32 lanes and `Σa(b)` is the sum of the
    /// activation's integers in block `b` (the offset takes out what an unsigned operand
    /// adds: −128 for `w + 128`, −8 for nibbles `q` of weights `q − 8`). Four blocks per
    /// step into four f32 accumulators; the offsets into a fifth, four blocks at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn sum_blocks<const B: usize, const OFFSET: i32>(
        row: &[u8],
        x: &Q8Act,
        lanes: impl Fn(&[u8], &[i8]) -> __m256i,
    ) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offsets = _mm_setzero_ps();
        let mut ws = row.chunks_exact(4 * B);
        let mut qs = x.qs.chunks_exact(4 * Q8_ACT_BLOCK);
        let mut ds = x.scales.chunks_exact(4);
        let mut ss = x.sums.chunks_exact(4);
        for (((w, a), d), s) in (&mut ws).zip(&mut qs).zip(&mut ds).zip(&mut ss) {
            // The four f16 scales converted at once (through a general register: no merge
            // into a vector register that may be an accumulator), times the activation's.
            let bits = (0..4).fold(0u64, |bits, k| {
                bits | u64::from(u16::from_le_bytes([w[k * B], w[k * B + 1]])) << (16 * k)
            });
            let dw = _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64));
            let d4 = _mm_mul_ps(dw, _mm_setr_ps(d[0], d[1], d[2], d[3]));
            if OFFSET != 0 {
                let sums = _mm_setr_epi32(s[0], s[1], s[2], s[3]);
                offsets = _mm_fmadd_ps(d4, _mm_cvtepi32_ps(sums), offsets);
            }
            let dd = _mm256_castps128_ps256(d4);
            for (k, acc) in acc.iter_mut().enumerate() {
                let a = &a[k * Q8_ACT_BLOCK..(k + 1) * Q8_ACT_BLOCK];
                let p = lanes(&w[k * B..(k + 1) * B], a);
                let d = _mm256_permutevar8x32_ps(dd, _mm256_set1_epi32(k as i32));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, *acc);
            }
        }
        let mut rest = 0.0f32;
        let blocks = ws
            .remainder()
            .chunks_exact(B)
            .zip(qs.remainder().chunks_exact(Q8_ACT_BLOCK))
            .zip(ds.remainder().iter().zip(ss.remainder()));
        for (k, ((w, a), (&dx, &sum))) in blocks.enumerate() {
            let d = scale(w) * dx;
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes(w, a)), _mm256_set1_ps(d), acc[k]);
            rest += d * (OFFSET * sum) as f32;
        }
        let offsets = _mm_mul_ps(offsets, _mm_set1_ps(OFFSET as f32));
        let all = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(_mm256_add_ps(all, _mm256_zextps128_ps256(offsets))) + rest
    }

    /// [`sum_blocks`] for `R` rows at once (each `x.len() / 32` blocks of `B` bytes): each
    /// step of four blocks loads the activation once for all rows, one accumulator a row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn sum_blocks_rows<const B: usize, const OFFSET: i32, const R: usize>(
        rows: [&[u8]; R],
        x: &Q8Act,
        lanes: impl Fn(&[u8], &[i8]) -> __m256i,
    ) -> [f32; R] {
        let n = x.scales.len();
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offsets = [_mm_setzero_ps(); R];
        let mut rest = [0.0f32; R];
        for q in 0..n / 4 {
            let a = &x.qs[q * 4 * Q8_ACT_BLOCK..(q + 1) * 4 * Q8_ACT_BLOCK];
            let d = &x.scales[q * 4..q * 4 + 4];
            let s = &x.sums[q * 4..q * 4 + 4];
            let dx = _mm_setr_ps(d[0], d[1], d[2], d[3]);
            let sums = _mm_cvtepi32_ps(_mm_setr_epi32(s[0], s[1], s[2], s[3]));
            for r in 0..R {
                let w = &rows[r][q * 4 * B..(q + 1) * 4 * B];
                let bits = (0..4).fold(0u64, |bits, k| {
                    bits | u64::from(u16::from_le_bytes([w[k * B], w[k * B + 1]])) << (16 * k)
                });
                let d4 = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64)), dx);
                if OFFSET != 0 {
                    offsets[r] = _mm_fmadd_ps(d4, sums, offsets[r]);
                }
                let dd = _mm256_castps128_ps256(d4);
                for k in 0..4 {
                    let p = lanes(
                        &w[k * B..(k + 1) * B],
                        &a[k * Q8_ACT_BLOCK..(k + 1) * Q8_ACT_BLOCK],
                    );
                    let d = _mm256_permutevar8x32_ps(dd, _mm256_set1_epi32(k as i32));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[r]);
                }
            }
        }
        for b in n / 4 * 4..n {
            let a = &x.qs[b * Q8_ACT_BLOCK..(b + 1) * Q8_ACT_BLOCK];
            for r in 0..R {
                let w = &rows[r][b * B..(b + 1) * B];
                let d = scale(w) * x.scales[b];
                acc[r] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes(w, a)), _mm256_set1_ps(d), acc[r]);
                rest[r] += d * (OFFSET * x.sums[b]) as f32;
            }
        }
        std::array::from_fn(|r| {
            let offsets = _mm_mul_ps(offsets[r], _mm_set1_ps(OFFSET as f32));
            hsum(_mm256_add_ps(acc[r], _mm256_zextps128_ps256(offsets))) + rest[r]
        })
    }

    /// The f16 scale in a block's first two bytes as f32, by F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn scale(block: &[u8]) -> f32 {
        let bits = u16::from_le_bytes([block[0], block[1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// The sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Pairwise products of signed bytes summed into eight i32 lanes (each lane four
    /// products): `|w|` as unsigned bytes times `a` with `w`'s sign, through `maddubs`. Every
    /// pair of products fits an i16 as long as `a` holds no −128.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn dot_i8(w: __m256i, a: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// 32 bytes at `p` as a vector.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn load32(p: &[u8; 32]) -> __m256i {
        // SAFETY: `p` is 32 readable bytes; loadu has no alignment need.
        unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
    }

    /// 32 signed bytes at `p` as a vector.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn load32_i8(p: &[i8]) -> __m256i {
        let p: &[i8; 32] = p.try_into().expect("32 bytes");
        // SAFETY: `p` is 32 readable bytes; loadu has no alignment need.
        unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
    }

    /// The 32 nibbles of `p` as bytes `0..16`, the low nibbles first (bytes 0..16), then the
    /// high ones: `p` in both halves, the upper half shifted by 4, no lane crossing.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn nibbles(p: &[u8; 16]) -> __m256i {
        let both = _mm256_broadcastsi128_si256(load16(p));
        let shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
    }

    /// 16 bytes at `p` as a vector.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn load16(p: &[u8; 16]) -> __m128i {
        // SAFETY: `p` is 16 readable bytes; loadu has no alignment need.
        unsafe { _mm_loadu_si128(p.as_ptr() as *const __m128i) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_blocks() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        x[40] = -100.0;
        let a = Q8Act::quantize(&x);
        assert_eq!(a.len(), 64);
        assert_eq!(a.scales().len(), 2);
        for (b, xb) in x.chunks(32).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(a.scales()[b], amax / 127.0);
            let q = &a.qs()[b * 32..(b + 1) * 32];
            assert!(q.iter().any(|&q| q.abs() == 127));
            assert_eq!(a.sums()[b], q.iter().map(|&q| i32::from(q)).sum::<i32>());
            for (&q, &v) in q.iter().zip(xb) {
                let want = (v / a.scales()[b]).round_ties_even();
                assert!((f32::from(q) - want).abs() <= 1.0, "{q} {want}");
            }
        }
        let back = a.dequantize();
        for (b, (&v, &w)) in back.iter().zip(&x).enumerate() {
            assert!((v - w).abs() <= a.scales()[b / 32] * 0.5 * 1.0001);
        }
    }

    #[test]
    fn rounds_ties_to_even_and_handles_zeros_and_nan() {
        // d = 1: the values are their own integers; halves round to even.
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 3.5;
        x[4] = f32::NAN;
        let a = Q8Act::quantize(&x);
        assert_eq!(a.scales()[0], 1.0);
        assert_eq!(&a.qs()[..5], &[127, 2, -2, 4, -127]);
        let z = Q8Act::quantize(&[0.0; 32]);
        assert_eq!((z.scales(), z.sums()), (&[0.0][..], &[0][..]));
        assert!(z.qs().iter().all(|&q| q == 0));
    }

    #[test]
    fn every_cpu_quantizes_alike() {
        let mut seed = 5u32;
        let mut x: Vec<f32> = (0..32 * 40)
            .map(|i| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                u * [1e-30f32, 1e-3, 1.0, 300.0, 1e30][i / 32 % 5]
            })
            .collect();
        // Exact halves (d = 1), zeros, NaN and infinities.
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[0] = 127.0;
        x[32..64].fill(0.0);
        x[70] = f32::NAN;
        x[100] = f32::INFINITY;
        x[140] = f32::NEG_INFINITY;
        x[141] = f32::NAN;
        let want = {
            let mut a = Q8Act::default();
            a.quantize_from(Cpu::portable(), &x);
            a
        };
        assert_eq!(&want.qs()[..4], &[127, -14, -14, -12]);
        for cpu in Cpu::detect().variants() {
            let mut a = Q8Act::default();
            a.quantize_from(cpu, &x);
            assert_eq!(a.qs(), want.qs(), "{cpu:?}");
            assert_eq!(a.sums(), want.sums(), "{cpu:?}");
            let bits = |a: &Q8Act| a.scales().iter().map(|d| d.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&want), "{cpu:?}");
        }
    }

    #[test]
    fn scale_checks_name_the_scale() {
        let mut b = [0u8; 34];
        assert!(check_scale(&b, "q8_0").is_ok());
        b[..2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let e = check_scale(&b, "q8_0").unwrap_err();
        assert!(e.contains("scale d is NaN"), "{e}");
        b[..2].copy_from_slice(&0xfc00u16.to_le_bytes());
        let e = check_scale(&b, "q4_0").unwrap_err();
        assert!(e.contains("scale d is infinite"), "{e}");
    }
}
