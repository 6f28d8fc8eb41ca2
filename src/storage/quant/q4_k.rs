//! GGUF's Q4_K: super-blocks of 256 weights in 144 bytes, as ggml's `block_q4_K`.
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..2 | `d`, f16: the scale of the sub-block scales |
//! | 2..4 | `dmin`, f16: the scale of the sub-block minimums |
//! | 4..16 | eight 6-bit scales `sc` and eight 6-bit minimums `m`, packed |
//! | 16..144 | 256 4-bit values `q`: byte `32 c + l` holds value `64 c + l` (low nibble) and `64 c + 32 + l` (high) |
//!
//! Value `i` of sub-block `j = i / 32` is `d · sc[j] · q[i] − dmin · m[j]`.

use super::q8_k::{check_scale, f16_at, f16_bytes, nearest_int, Q8KActivation, Q8KBlock, QK_K};
use super::BlockFormat;
use crate::ops::Cpu;

/// GGUF's Q4_K block format (4.5 bits a weight).
#[derive(Clone, Copy, Debug, Default)]
pub struct Q4K;

/// Bytes of a Q4_K block.
const BYTES: usize = 144;

/// The 6-bit scale and minimum of sub-block `j` from the 12 packed bytes `s` (ggml's
/// `get_scale_min_k4`): `j < 4` in the low six bits of bytes `j` and `j + 4`, the others in
/// the nibbles of byte `j + 4` with their top two bits in bytes `j − 4` and `j`.
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// All eight scales and all eight minimums of the 12 packed bytes `s`, one byte each
/// (little-endian), unpacked with whole-word operations as llama.cpp's kernels do.
#[inline]
pub(crate) fn scales_mins_k4_words(s: &[u8]) -> (u64, u64) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (w(0), w(1), w(2));
    let sc_lo = a & LOW6;
    let sc_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let m_lo = b & LOW6;
    let m_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
    (
        u64::from(sc_lo) | (u64::from(sc_hi) << 32),
        u64::from(m_lo) | (u64::from(m_hi) << 32),
    )
}

/// All eight scales and minimums of the 12 packed bytes `s`.
#[inline]
pub(crate) fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (sc, m) = scales_mins_k4_words(s);
    (sc.to_le_bytes(), m.to_le_bytes())
}

/// ggml's `make_qkx2_quants`: levels `L` in `0..=nmax` for `x` and the scale and (negated)
/// minimum that fit `x ≈ scale · L − min` best in weighted squared error, searching
/// `nstep + 1` scales around `nmax / (max − min)`. Returns `(scale, min)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// A K-quant super-block with 6-bit scales and minimums (Q4_K, Q5_K) quantized as ggml's
/// reference quantizers do: each sub-block of 32 fitted by [`make_qkx2_quants`] with the
/// weights `rms + |x|`, the scales and minimums quantized to 6 bits against their largest,
/// then every value requantized with the stored scales. Returns `d`, `dmin` (as stored,
/// f16), the 12 packed scale bytes and the 256 levels.
pub(crate) fn quantize_k_block(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            rmin,
            rdelta,
            nstep,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // As ggml: the rounded level truncated to a byte, then at most 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_bytes(max_scale / 63.0);
    let dmin = f16_bytes(max_min / 63.0);
    let (df, dminf) = (f16_at(&d, 0), f16_at(&dmin, 0));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = df * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dminf * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, levels)
}

impl BlockFormat for Q4K {
    const NAME: &'static str = "q4_k";
    const VALUES: usize = QK_K;
    const BYTES: usize = BYTES;
    type Activation = Q8KActivation;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let (sc, m) = scales_mins_k4(&block[4..16]);
        let qs = &block[16..BYTES];
        for c in 0..4 {
            let (d1, m1) = (d * sc[2 * c] as f32, dmin * m[2 * c] as f32);
            let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * m[2 * c + 1] as f32);
            let q = &qs[32 * c..32 * c + 32];
            let (lo, hi) = out[64 * c..64 * c + 64].split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * (q[l] & 0xf) as f32 - m1;
                hi[l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }

    fn quantize(values: &[f32], block: &mut [u8]) {
        let (d, dmin, scales, levels) = quantize_k_block(values, 15, -1.0, 0.1, 20);
        block[0..2].copy_from_slice(&d);
        block[2..4].copy_from_slice(&dmin);
        block[4..16].copy_from_slice(&scales);
        for c in 0..4 {
            for l in 0..32 {
                block[16 + 32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4);
            }
        }
    }

    fn quantize_activation_into(_: Cpu, x: &[f32], act: &mut Q8KActivation) {
        act.quantize_from(x);
    }

    fn dot(cpu: Cpu, row: &[u8], x: &Q8KActivation) -> f32 {
        assert_eq!(row.len() / BYTES, x.blocks.len(), "Q4K::dot: lengths");
        #[cfg(target_arch = "x86_64")]
        if cpu.has_avx2() {
            // SAFETY: `cpu` says this CPU has AVX2.
            return unsafe { avx2::dot(row, &x.blocks) };
        }
        let _ = cpu;
        dot_portable(row, &x.blocks)
    }

    fn check_block(block: &[u8]) -> Result<(), String> {
        check_scale(block, 0, "d")?;
        check_scale(block, 2, "dmin")
    }
}

/// The block's contribution `d · y.d · sumi − dmin · y.d · summ` added to `acc` (`d`,
/// `dmin` the block's scales; one expression for every kernel, so they agree bit for bit).
#[inline]
pub(crate) fn finish_block(acc: f32, d: f32, dmin: f32, yd: f32, sumi: i32, summ: i32) -> f32 {
    acc + (d * yd) * sumi as f32 - (dmin * yd) * summ as f32
}

/// `Σ m[j] · (bsums[2 j] + bsums[2 j + 1])`: the minimums against the activation's sums.
#[inline]
pub(crate) fn mins_dot(m: &[u8; 8], y: &Q8KBlock) -> i32 {
    (0..8)
        .map(|j| m[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32))
        .sum()
}

/// The dot product in portable integer code.
fn dot_portable(row: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut acc = 0.0f32;
    for (block, y) in row.chunks_exact(BYTES).zip(x) {
        let (sc, m) = scales_mins_k4(&block[4..16]);
        let qs = &block[16..BYTES];
        let mut sumi = 0i32;
        for c in 0..4 {
            let q = &qs[32 * c..32 * c + 32];
            let (y_lo, y_hi) = y.qs[64 * c..64 * c + 64].split_at(32);
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (q[l] & 0xf) as i32 * y_lo[l] as i32;
                hi += (q[l] >> 4) as i32 * y_hi[l] as i32;
            }
            sumi += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
        }
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        acc = finish_block(acc, d, dmin, y.d, sumi, mins_dot(&m, y));
    }
    acc
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{finish_block, scales_mins_k4_words, Q8KBlock, BYTES};
    use crate::storage::quant::q8_k::hsum_i32_avx2;
    use std::arch::x86_64::*;

    /// The two f16 values at `block[0..4]` (`d`, `dmin`), widened with F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(crate) fn d_dmin(block: &[u8]) -> (f32, f32) {
        let bits = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// The sub-block scales of a Q4_K/Q5_K block as i16 in both halves of a register (for
    /// [`scale`]), and `Σ m[j] · (bsums[2 j] + bsums[2 j + 1])`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn scales_and_mins(packed: &[u8], y: &Q8KBlock) -> (__m256i, i32) {
        let (sc, m) = scales_mins_k4_words(packed);
        let both = _mm256_cvtepu8_epi16(_mm_set_epi64x(m as i64, sc as i64));
        // SAFETY: `bsums` is 16 i16, 32 bytes; unaligned load.
        let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let pairs = _mm_hadd_epi16(
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256::<1>(bsums),
        );
        let mins = _mm_madd_epi16(_mm256_extracti128_si256::<1>(both), pairs);
        let mins = _mm_add_epi32(mins, _mm_unpackhi_epi64(mins, mins));
        let mins = _mm_add_epi32(mins, _mm_shuffle_epi32::<0b01>(mins));
        let sc = _mm256_castsi256_si128(both);
        (_mm256_setr_m128i(sc, sc), _mm_cvtsi128_si32(mins))
    }

    /// Scale `j` (`J`) of [`scales_and_mins`]' register in every i16 lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn scale<const J: i16>(scales: __m256i) -> __m256i {
        _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * J + 1) << 8) | (2 * J)))
    }

    /// `sumi` plus the 32 products of nibbles `q` and activation bytes `y`, times `scale`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn add_scaled(sumi: __m256i, scale: __m256i, q: __m256i, y: __m256i) -> __m256i {
        _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q, y)))
    }

    /// The dot product with AVX2: nibbles times activation bytes by `maddubs`, times the
    /// sub-block scales by `madd`, summed exactly in i32 per block.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn dot(row: &[u8], x: &[Q8KBlock]) -> f32 {
        let low4 = _mm256_set1_epi8(0xf);
        let mut acc = 0.0f32;
        for (block, y) in row.chunks_exact(BYTES).zip(x) {
            let block: &[u8; BYTES] = block.try_into().expect("one block");
            let (scales, summ) = scales_and_mins(&block[4..16], y);
            // SAFETY: 32-byte unaligned loads at 16 + 32 c (c < 4, so ≤ 144 bytes) of the
            // block and at 32 k (k < 8, so ≤ 256 bytes) of `y.qs`.
            let load = |p: *const u8, at: usize| unsafe { _mm256_loadu_si256(p.add(at).cast()) };
            let q = |c: usize| load(block.as_ptr(), 16 + 32 * c);
            let ys = |k: usize| load(y.qs.as_ptr().cast(), 32 * k);
            let lo = |b: __m256i| _mm256_and_si256(b, low4);
            let hi = |b: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(b), low4);
            let mut sumi = _mm256_setzero_si256();
            let b = q(0);
            sumi = add_scaled(sumi, scale::<0>(scales), lo(b), ys(0));
            sumi = add_scaled(sumi, scale::<1>(scales), hi(b), ys(1));
            let b = q(1);
            sumi = add_scaled(sumi, scale::<2>(scales), lo(b), ys(2));
            sumi = add_scaled(sumi, scale::<3>(scales), hi(b), ys(3));
            let b = q(2);
            sumi = add_scaled(sumi, scale::<4>(scales), lo(b), ys(4));
            sumi = add_scaled(sumi, scale::<5>(scales), hi(b), ys(5));
            let b = q(3);
            sumi = add_scaled(sumi, scale::<6>(scales), lo(b), ys(6));
            sumi = add_scaled(sumi, scale::<7>(scales), hi(b), ys(7));
            let (d, dmin) = d_dmin(block);
            acc = finish_block(acc, d, dmin, y.d, hsum_i32_avx2(sumi), summ);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reproducible bytes.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (s >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn word_unpacking_matches_get_scale_min_k4() {
        for seed in 0..200 {
            let s = bytes(seed, 12);
            let (sc, m) = scales_mins_k4(&s);
            for j in 0..8 {
                assert_eq!((sc[j], m[j]), scale_min_k4(j, &s), "{s:?} {j}");
            }
        }
    }

    #[test]
    fn quantize_packs_what_dequantize_reads() {
        let x: Vec<f32> = (0..QK_K)
            .map(|i| ((i * 29 % 61) as f32 - 20.0) * 0.01)
            .collect();
        let mut block = [0u8; BYTES];
        Q4K::quantize(&x, &mut block);
        let (sc, m) = scales_mins_k4(&block[4..16]);
        assert!(sc.iter().all(|&s| s < 64) && m.iter().all(|&v| v < 64));
        assert!(sc.contains(&63), "the largest scale takes the top level");
        let mut back = [0f32; QK_K];
        Q4K::dequantize(&block, &mut back);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= amax / 15.0, "{a} vs {b}");
        }
    }

    #[test]
    fn qkx2_fits_a_ramp_exactly() {
        let x: Vec<f32> = (0..32).map(|i| -0.5 + 0.1 * (i % 16) as f32).collect();
        let w = [1.0f32; 32];
        let mut levels = [0u8; 32];
        let (scale, min) = make_qkx2_quants(15, &x, &w, &mut levels, -1.0, 0.1, 20);
        for (l, v) in levels.iter().zip(&x) {
            assert!((scale * *l as f32 - min - v).abs() < 1e-5);
        }
        let (scale, min) = make_qkx2_quants(15, &[0.0; 32], &w, &mut levels, -1.0, 0.1, 20);
        assert_eq!((scale, min, levels), (0.0, 0.0, [0; 32]));
    }

    #[test]
    fn kernels_agree_on_random_blocks() {
        let mut row = bytes(7, 4 * BYTES);
        for b in row.chunks_exact_mut(BYTES) {
            b[0..2].copy_from_slice(&f16_bytes(0.01));
            b[2..4].copy_from_slice(&f16_bytes(-0.003));
        }
        let x: Vec<f32> = bytes(9, 4 * QK_K)
            .iter()
            .map(|&b| b as f32 - 128.0)
            .collect();
        let act = Q8KActivation::quantize(&x);
        let want = dot_portable(&row, &act.blocks);
        for cpu in Cpu::detect().variants() {
            assert_eq!(Q4K::dot(cpu, &row, &act).to_bits(), want.to_bits());
        }
    }
}
