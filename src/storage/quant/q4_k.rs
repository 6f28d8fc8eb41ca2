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

/// All eight scales and minimums of the 12 packed bytes `s`.
#[inline]
pub(crate) fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, s);
    }
    (sc, m)
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

    fn quantize_activation(x: &[f32]) -> Q8KActivation {
        Q8KActivation::quantize(x)
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

/// The block's contribution `d · sumi − dmin · summ` added to `acc` (one expression for
/// every kernel, so they agree bit for bit).
#[inline]
pub(crate) fn finish_block(acc: f32, block: &[u8], y: &Q8KBlock, sumi: i32, summ: i32) -> f32 {
    let d = f16_at(block, 0) * y.d;
    let dmin = f16_at(block, 2) * y.d;
    acc + d * sumi as f32 - dmin * summ as f32
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
        acc = finish_block(acc, block, y, sumi, mins_dot(&m, y));
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{finish_block, mins_dot, scales_mins_k4, Q8KBlock, BYTES};
    use crate::storage::quant::q8_k::hsum_i32_avx2;
    use std::arch::x86_64::*;

    /// The dot product with AVX2: nibbles times activation bytes by `maddubs`, times the
    /// sub-block scales by `madd`, summed exactly in i32 per block.
    #[target_feature(enable = "avx2")]
    pub(super) fn dot(row: &[u8], x: &[Q8KBlock]) -> f32 {
        let low4 = _mm256_set1_epi8(0xf);
        let mut acc = 0.0f32;
        for (block, y) in row.chunks_exact(BYTES).zip(x) {
            let (sc, m) = scales_mins_k4(&block[4..16]);
            let qs: &[u8; 128] = block[16..BYTES].try_into().expect("128 bytes");
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                // SAFETY: 32 bytes at `32 c` of `qs` (128 bytes) and at `64 c`, `64 c + 32`
                // of `y.qs` (256 bytes); unaligned loads.
                let (bits, y_lo, y_hi) = unsafe {
                    (
                        _mm256_loadu_si256(qs.as_ptr().add(32 * c).cast()),
                        _mm256_loadu_si256(y.qs.as_ptr().add(64 * c).cast()),
                        _mm256_loadu_si256(y.qs.as_ptr().add(64 * c + 32).cast()),
                    )
                };
                let lo = _mm256_and_si256(bits, low4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
                let p_lo = _mm256_madd_epi16(
                    _mm256_set1_epi16(sc[2 * c] as i16),
                    _mm256_maddubs_epi16(lo, y_lo),
                );
                let p_hi = _mm256_madd_epi16(
                    _mm256_set1_epi16(sc[2 * c + 1] as i16),
                    _mm256_maddubs_epi16(hi, y_hi),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            acc = finish_block(acc, block, y, hsum_i32_avx2(sumi), mins_dot(&m, y));
        }
        acc
    }
}
