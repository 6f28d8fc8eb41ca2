//! GGUF's Q6_K: super-blocks of 256 weights in 210 bytes, as ggml's `block_q6_K`.
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..128 | the low four bits: in half `n` (values `128 n ..`), byte `64 n + l` holds value `128 n + l` (low nibble) and `128 n + 64 + l` (high), byte `64 n + 32 + l` values `128 n + 32 + l` and `128 n + 96 + l` |
//! | 128..192 | the high two bits: byte `128 + 32 n + l`, bits `2 k..2 k + 2` for value `128 n + 32 k + l` |
//! | 192..208 | sixteen i8 scales `sc`, one per 16 values |
//! | 208..210 | `d`, f16 |
//!
//! Value `i` is `d · sc[i / 16] · (q[i] − 32)`, `q` in `0..64`.

use super::q8_k::{check_scale, f16_at, f16_bytes, nearest_int, Q8KActivation, Q8KBlock, QK_K};
use super::BlockFormat;
use crate::ops::Cpu;

/// GGUF's Q6_K block format (6.5625 bits a weight).
#[derive(Clone, Copy, Debug, Default)]
pub struct Q6K;

/// Bytes of a Q6_K block.
const BYTES: usize = 210;

/// The 6-bit value `i` of a block, in `0..64`.
#[inline]
fn level(block: &[u8], i: usize) -> u8 {
    let (n, r) = (i / 128, i % 128);
    let (k, l) = (r / 32, r % 32);
    let low = (block[64 * n + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xf;
    let high = (block[128 + 32 * n + l] >> (2 * k)) & 3;
    low | (high << 4)
}

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance: levels `L` in
/// `−nmax..nmax` (stored `+ nmax`) and the scale that fit `x ≈ scale · L` best in squared
/// error weighted by `x²`, trying 19 scales around `−nmax / max`.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [u8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, levels: &mut [u8]| {
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as u8;
        }
    };
    let iscale = -nmaxf / max;
    fill(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

impl BlockFormat for Q6K {
    const NAME: &'static str = "q6_k";
    const VALUES: usize = QK_K;
    const BYTES: usize = BYTES;
    type Activation = Q8KActivation;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 208);
        for (j, o) in out[..QK_K].chunks_exact_mut(16).enumerate() {
            let dj = d * block[192 + j] as i8 as f32;
            for (l, v) in o.iter_mut().enumerate() {
                *v = dj * (level(block, 16 * j + l) as i32 - 32) as f32;
            }
        }
    }

    fn quantize(values: &[f32], block: &mut [u8]) {
        let mut levels = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for j in 0..16 {
            let s = make_qx_quants(
                32,
                &values[16 * j..16 * j + 16],
                &mut levels[16 * j..16 * j + 16],
            );
            scales[j] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        block[..BYTES].fill(0);
        if max_abs_scale < 1e-15 {
            return;
        }
        let iscale = -128.0f32 / max_scale;
        block[208..210].copy_from_slice(&f16_bytes(1.0 / iscale));
        for j in 0..16 {
            block[192 + j] = nearest_int(iscale * scales[j]).min(127) as i8 as u8;
        }
        let d = f16_at(block, 208);
        for j in 0..16 {
            let dj = d * block[192 + j] as i8 as f32;
            if dj == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                levels[i] = (nearest_int(values[i] / dj).clamp(-32, 31) + 32) as u8;
            }
        }
        for n in 0..2 {
            for l in 0..32 {
                let q = |k: usize| levels[128 * n + 32 * k + l];
                block[64 * n + l] = (q(0) & 0xf) | ((q(2) & 0xf) << 4);
                block[64 * n + 32 + l] = (q(1) & 0xf) | ((q(3) & 0xf) << 4);
                block[128 + 32 * n + l] =
                    (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }

    fn quantize_activation_into(_: Cpu, x: &[f32], act: &mut Q8KActivation) {
        act.quantize_from(x);
    }

    fn dot(cpu: Cpu, row: &[u8], x: &Q8KActivation) -> f32 {
        assert_eq!(row.len() / BYTES, x.blocks.len(), "Q6K::dot: lengths");
        #[cfg(target_arch = "x86_64")]
        if cpu.has_avx2() {
            // SAFETY: `cpu` says this CPU has AVX2.
            return unsafe { avx2::dot(row, &x.blocks) };
        }
        let _ = cpu;
        dot_portable(row, &x.blocks)
    }

    fn check_block(block: &[u8]) -> Result<(), String> {
        check_scale(block, 208, "d")
    }
}

/// The block's contribution `d · y.d · sumi` added to `acc` (`d` the block's scale; one
/// expression for every kernel, so they agree bit for bit).
#[inline]
fn finish_block(acc: f32, d: f32, yd: f32, sumi: i32) -> f32 {
    acc + (d * yd) * sumi as f32
}

/// The dot product in portable integer code.
fn dot_portable(row: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut acc = 0.0f32;
    for (block, y) in row.chunks_exact(BYTES).zip(x) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let mut s = 0i32;
            for l in 0..16 {
                let i = 16 * j + l;
                s += (level(block, i) as i32 - 32) * y.qs[i] as i32;
            }
            sumi += block[192 + j] as i8 as i32 * s;
        }
        acc = finish_block(acc, f16_at(block, 208), y.d, sumi);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{finish_block, Q8KBlock, BYTES};
    use crate::storage::quant::q8_k::hsum_i32_avx2;
    use std::arch::x86_64::*;

    /// The dot product with AVX2: `q · y` by `maddubs`, times the scales by `madd`, less
    /// `32 · Σ sc[j] · bsums[j]` (the offset of `q`), summed exactly in i32 per block.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn dot(row: &[u8], x: &[Q8KBlock]) -> f32 {
        let low4 = _mm256_set1_epi8(0xf);
        let top2 = _mm256_set1_epi8(0x30);
        let mut acc = 0.0f32;
        for (block, y) in row.chunks_exact(BYTES).zip(x) {
            let block: &[u8; BYTES] = block.try_into().expect("one block");
            // SAFETY: unaligned loads inside the block (32 bytes at ≤ 160, 16 at 192) and
            // `y` (32 bytes at ≤ 224 of `qs`, the 32 bytes of `bsums`).
            let load = |p: *const u8, at: usize| unsafe { _mm256_loadu_si256(p.add(at).cast()) };
            let sc8 = unsafe { _mm_loadu_si128(block.as_ptr().add(192).cast()) };
            let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
            let ys = |k: usize| load(y.qs.as_ptr().cast(), 32 * k);
            // Scales `j` and `j + 1` (j even) as i16, for the two halves of 32 values.
            let scale = |j: i8| {
                let pick = _mm_setr_epi8(
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                );
                _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick))
            };
            let offset =
                _mm256_slli_epi32::<5>(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), bsums));
            let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), offset);
            for n in 0..2 {
                let l0 = load(block.as_ptr(), 64 * n);
                let l1 = load(block.as_ptr(), 64 * n + 32);
                let hb = load(block.as_ptr(), 128 + 32 * n);
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(l0, low4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(hb), top2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(l1, low4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hb), top2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), low4),
                        _mm256_and_si256(hb, top2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), low4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(hb), top2),
                    ),
                ];
                for (k, qk) in q.into_iter().enumerate() {
                    let p = _mm256_maddubs_epi16(qk, ys(4 * n + k));
                    let s = scale((8 * n + 2 * k) as i8);
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s, p));
                }
            }
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                i32::from(block[208]) | (i32::from(block[209]) << 8),
            )));
            acc = finish_block(acc, d, y.d, hsum_i32_avx2(sumi));
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_packs_what_dequantize_reads() {
        // Levels −32..31 in every group of 64 values.
        let x: Vec<f32> = (0..QK_K).map(|i| ((i % 64) as f32 - 32.0) * 0.5).collect();
        let mut block = [0u8; BYTES];
        Q6K::quantize(&x, &mut block);
        let mut back = [0f32; QK_K];
        Q6K::dequantize(&block, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 0.5 * 0.5 + 1e-3, "{a} vs {b}");
        }
        let mut zero = [1u8; BYTES];
        Q6K::quantize(&[0.0; QK_K], &mut zero);
        assert!(zero.iter().all(|&b| b == 0));
    }

    #[test]
    fn qx_levels_are_in_range_and_fit() {
        let x: Vec<f32> = (0..16).map(|i| (i as f32 - 7.3) * 0.37).collect();
        let mut levels = [0u8; 16];
        let scale = make_qx_quants(32, &x, &mut levels);
        for (l, v) in levels.iter().zip(&x) {
            assert!(*l < 64);
            assert!((scale * (*l as f32 - 32.0) - v).abs() <= scale.abs() * 0.5 + 1e-6);
        }
    }

    #[test]
    fn kernels_agree_on_random_blocks() {
        let mut s = 11u64;
        let mut next = || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (s >> 56) as u8
        };
        let mut row: Vec<u8> = (0..3 * BYTES).map(|_| next()).collect();
        for b in row.chunks_exact_mut(BYTES) {
            b[208..210].copy_from_slice(&f16_bytes(-0.001));
        }
        let x: Vec<f32> = (0..3 * QK_K).map(|_| next() as f32 - 128.0).collect();
        let act = Q8KActivation::quantize(&x);
        let want = dot_portable(&row, &act.blocks);
        for cpu in Cpu::detect().variants() {
            assert_eq!(Q6K::dot(cpu, &row, &act).to_bits(), want.to_bits());
        }
    }
}
