//! GGUF's Q5_K: super-blocks of 256 weights in 176 bytes, as ggml's `block_q5_K`.
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..2 | `d`, f16: the scale of the sub-block scales |
//! | 2..4 | `dmin`, f16: the scale of the sub-block minimums |
//! | 4..16 | eight 6-bit scales `sc` and eight 6-bit minimums `m`, packed as in Q4_K |
//! | 16..48 | the fifth bits: bit `2 c` of byte `l` for value `64 c + l`, bit `2 c + 1` for `64 c + 32 + l` |
//! | 48..176 | the low four bits: byte `32 c + l` holds value `64 c + l` (low nibble) and `64 c + 32 + l` (high) |
//!
//! Value `i` of sub-block `j = i / 32` is `d · sc[j] · q[i] − dmin · m[j]`, `q` in `0..32`.

use super::q4_k::{finish_block, mins_dot, quantize_k_block, scales_mins_k4};
use super::q8_k::{check_scale, f16_at, Q8KActivation, Q8KBlock, QK_K};
use super::BlockFormat;
use crate::ops::Cpu;

/// GGUF's Q5_K block format (5.5 bits a weight).
#[derive(Clone, Copy, Debug, Default)]
pub struct Q5K;

/// Bytes of a Q5_K block.
const BYTES: usize = 176;

/// The 5-bit value `64 c + 32 h + l` of a block (`h` 0 or 1).
#[inline]
fn level(qh: &[u8], ql: &[u8], c: usize, h: usize, l: usize) -> u8 {
    let low = (ql[32 * c + l] >> (4 * h)) & 0xf;
    let high = (qh[l] >> (2 * c + h)) & 1;
    low | (high << 4)
}

impl BlockFormat for Q5K {
    const NAME: &'static str = "q5_k";
    const VALUES: usize = QK_K;
    const BYTES: usize = BYTES;
    type Activation = Q8KActivation;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let (sc, m) = scales_mins_k4(&block[4..16]);
        let (qh, ql) = (&block[16..48], &block[48..BYTES]);
        for c in 0..4 {
            for h in 0..2 {
                let j = 2 * c + h;
                let (dj, mj) = (d * sc[j] as f32, dmin * m[j] as f32);
                for l in 0..32 {
                    out[64 * c + 32 * h + l] = dj * level(qh, ql, c, h, l) as f32 - mj;
                }
            }
        }
    }

    fn quantize(values: &[f32], block: &mut [u8]) {
        let (d, dmin, scales, levels) = quantize_k_block(values, 31, -0.5, 0.1, 15);
        block[0..2].copy_from_slice(&d);
        block[2..4].copy_from_slice(&dmin);
        block[4..16].copy_from_slice(&scales);
        let (qh, ql) = block[16..BYTES].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (a, b) = (levels[64 * c + l], levels[64 * c + 32 + l]);
                ql[32 * c + l] = (a & 0xf) | ((b & 0xf) << 4);
                qh[l] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
            }
        }
    }

    fn quantize_activation_into(_: Cpu, x: &[f32], act: &mut Q8KActivation) {
        act.quantize_from(x);
    }

    fn dot(cpu: Cpu, row: &[u8], x: &Q8KActivation) -> f32 {
        assert_eq!(row.len() / BYTES, x.blocks.len(), "Q5K::dot: lengths");
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

/// The dot product in portable integer code.
fn dot_portable(row: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut acc = 0.0f32;
    for (block, y) in row.chunks_exact(BYTES).zip(x) {
        let (sc, m) = scales_mins_k4(&block[4..16]);
        let (qh, ql) = (&block[16..48], &block[48..BYTES]);
        let mut sumi = 0i32;
        for c in 0..4 {
            for h in 0..2 {
                let ys = &y.qs[64 * c + 32 * h..64 * c + 32 * h + 32];
                let mut s = 0i32;
                for (l, &yv) in ys.iter().enumerate() {
                    s += level(qh, ql, c, h, l) as i32 * yv as i32;
                }
                sumi += sc[2 * c + h] as i32 * s;
            }
        }
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        acc = finish_block(acc, d, dmin, y.d, sumi, mins_dot(&m, y));
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{finish_block, Q8KBlock, BYTES};
    use crate::storage::quant::q4_k::avx2::{add_scaled, d_dmin, scale, scales_and_mins};
    use crate::storage::quant::q8_k::hsum_i32_avx2;
    use std::arch::x86_64::*;

    /// The dot product with AVX2: the fifth bit merged in by a compare, then `maddubs` and
    /// `madd` as for Q4_K, summed exactly in i32 per block.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn dot(row: &[u8], x: &[Q8KBlock]) -> f32 {
        let low4 = _mm256_set1_epi8(0xf);
        let sixteen = _mm256_set1_epi8(16);
        let mut acc = 0.0f32;
        for (block, y) in row.chunks_exact(BYTES).zip(x) {
            let block: &[u8; BYTES] = block.try_into().expect("one block");
            let (sc, summ) = scales_and_mins(&block[4..16], y);
            // SAFETY: 32-byte unaligned loads at 16 and 48 + 32 c (c < 4, so ≤ 176 bytes)
            // of the block and at 32 k (k < 8, so ≤ 256 bytes) of `y.qs`.
            let load = |p: *const u8, at: usize| unsafe { _mm256_loadu_si256(p.add(at).cast()) };
            let hbits = load(block.as_ptr(), 16);
            let ys = |k: usize| load(y.qs.as_ptr().cast(), 32 * k);
            // The low nibbles (`h` 0) or high ones (`h` 1) of `b` with bit `k` of `hbits` as
            // their fifth bit.
            let level = |b: __m256i, h: bool, k: i32| {
                let bit = _mm256_set1_epi8(1 << k);
                let fifth = _mm256_and_si256(
                    _mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit), bit),
                    sixteen,
                );
                let b = if h { _mm256_srli_epi16::<4>(b) } else { b };
                _mm256_or_si256(_mm256_and_si256(b, low4), fifth)
            };
            let mut sumi = _mm256_setzero_si256();
            let b = load(block.as_ptr(), 48);
            sumi = add_scaled(sumi, scale::<0>(sc), level(b, false, 0), ys(0));
            sumi = add_scaled(sumi, scale::<1>(sc), level(b, true, 1), ys(1));
            let b = load(block.as_ptr(), 80);
            sumi = add_scaled(sumi, scale::<2>(sc), level(b, false, 2), ys(2));
            sumi = add_scaled(sumi, scale::<3>(sc), level(b, true, 3), ys(3));
            let b = load(block.as_ptr(), 112);
            sumi = add_scaled(sumi, scale::<4>(sc), level(b, false, 4), ys(4));
            sumi = add_scaled(sumi, scale::<5>(sc), level(b, true, 5), ys(5));
            let b = load(block.as_ptr(), 144);
            sumi = add_scaled(sumi, scale::<6>(sc), level(b, false, 6), ys(6));
            sumi = add_scaled(sumi, scale::<7>(sc), level(b, true, 7), ys(7));
            let (d, dmin) = d_dmin(block);
            acc = finish_block(acc, d, dmin, y.d, hsum_i32_avx2(sumi), summ);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::quant::q8_k::f16_bytes;

    #[test]
    fn quantize_packs_the_fifth_bit_where_dequantize_reads_it() {
        // A ramp over all 32 levels in every sub-block.
        let x: Vec<f32> = (0..QK_K).map(|i| (i % 32) as f32 * 0.25).collect();
        let mut block = [0u8; BYTES];
        Q5K::quantize(&x, &mut block);
        let mut back = [0f32; QK_K];
        Q5K::dequantize(&block, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 0.02, "{a} vs {b}");
        }
        let (qh, ql) = (&block[16..48], &block[48..BYTES]);
        for i in 0..QK_K {
            let (c, h, l) = (i / 64, i % 64 / 32, i % 32);
            assert_eq!(level(qh, ql, c, h, l) as usize, i % 32);
        }
    }

    #[test]
    fn kernels_agree_on_random_blocks() {
        let mut s = 3u64;
        let mut next = || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (s >> 56) as u8
        };
        let mut row: Vec<u8> = (0..3 * BYTES).map(|_| next()).collect();
        for b in row.chunks_exact_mut(BYTES) {
            b[0..2].copy_from_slice(&f16_bytes(0.02));
            b[2..4].copy_from_slice(&f16_bytes(0.005));
        }
        let x: Vec<f32> = (0..3 * QK_K).map(|_| next() as f32 - 128.0).collect();
        let act = Q8KActivation::quantize(&x);
        let want = dot_portable(&row, &act.blocks);
        for cpu in Cpu::detect().variants() {
            assert_eq!(Q5K::dot(cpu, &row, &act).to_bits(), want.to_bits());
        }
    }
}
