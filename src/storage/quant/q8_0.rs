//! GGUF's `Q8_0` blocks: 32 weights in 34 bytes, an f16 scale `d` (little-endian) then 32
//! signed bytes `q`; each weight is `d · q`.

use super::q8_act::{check_scale, f16_at, Q8Act, Q8_ACT_BLOCK};
use super::BlockFormat;
use crate::ops::Cpu;

/// GGUF's `Q8_0` block format (ggml type 8): 32 weights as an f16 scale and 32 `i8`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q8_0;

/// Weights per block.
const QK: usize = 32;
/// Bytes per block.
const BYTES: usize = 2 + QK;

impl BlockFormat for Q8_0 {
    const NAME: &'static str = "q8_0";
    const VALUES: usize = QK;
    const BYTES: usize = BYTES;
    type Activation = Q8Act;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block).to_f32();
        for (o, &q) in out[..QK].iter_mut().zip(&block[2..BYTES]) {
            *o = f32::from(q as i8) * d;
        }
    }

    /// ggml's `quantize_row_q8_0_ref`: `d = max|x| / 127`, `q = round(x · (1/d))` (halves
    /// away from zero), `d` stored as f16.
    fn quantize(values: &[f32], block: &mut [u8]) {
        let values = &values[..QK];
        let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block[..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        for (b, &v) in block[2..BYTES].iter_mut().zip(values) {
            *b = (v * id).round() as i8 as u8;
        }
    }

    fn quantize_activation_into(cpu: Cpu, x: &[f32], act: &mut Q8Act) {
        act.quantize_from(cpu, x);
    }

    #[track_caller]
    fn dot(cpu: Cpu, row: &[u8], x: &Q8Act) -> f32 {
        assert!(
            row.len().is_multiple_of(BYTES) && row.len() / BYTES * QK == x.len(),
            "Q8_0::dot: {} bytes of blocks against {} values",
            row.len(),
            x.len()
        );
        #[cfg(target_arch = "x86_64")]
        {
            if cpu.has_avx512_vnni() {
                // SAFETY: the `Cpu` says this CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI;
                // the lengths match (checked above).
                return unsafe { x86::dot_vnni(row, x) };
            }
            if cpu.has_avx2() {
                // SAFETY: the `Cpu` says this CPU has AVX2, FMA and F16C; the lengths match.
                return unsafe { x86::dot_avx2(row, x) };
            }
        }
        let _ = cpu;
        dot_portable(row, x)
    }

    // `dot_rows` is left to its default, one row at a time through the 256-bit kernels, which
    // stream faster than four rows per pass or the 512-bit kernels of Q4_0's kind
    // (docs/performance.md).

    fn check_block(block: &[u8]) -> Result<(), String> {
        check_scale(block, Self::NAME)
    }
}

/// The integer dot product of one block with 32 activation integers.
#[inline]
fn block_dot(block: &[u8], a: &[i8]) -> i32 {
    block[2..BYTES]
        .iter()
        .zip(a)
        .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
        .sum()
}

/// [`Q8_0::dot`] in plain Rust: each block's integer sum times `d_w · d_x`, added in f32.
fn dot_portable(row: &[u8], x: &Q8Act) -> f32 {
    row.chunks_exact(BYTES)
        .zip(x.qs().chunks_exact(Q8_ACT_BLOCK))
        .zip(x.scales())
        .map(|((w, a), &dx)| f16_at(w).to_f32() * dx * block_dot(w, a) as f32)
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::q8_act::avx2::{dot_i8, load32, load32_i8, sum_blocks};
    use super::super::q8_act::Q8Act;
    use super::BYTES;
    use std::arch::x86_64::*;

    /// A block's products with the activation in eight i32 lanes, with AVX2: `maddubs` on
    /// `|w|` and the activation with `w`'s sign.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn lanes_avx2(w: &[u8], a: &[i8]) -> __m256i {
        dot_i8(load32(w[2..].try_into().expect("32")), load32_i8(a))
    }

    /// A block's products with the activation in eight i32 lanes plus `128 · Σa`, with
    /// AVX-512 VNNI: `vpdpbusd` on `w + 128` as unsigned bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn lanes_vnni(w: &[u8], a: &[i8]) -> __m256i {
        let wu = _mm256_xor_si256(
            load32(w[2..].try_into().expect("32")),
            _mm256_set1_epi8(-128),
        );
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, load32_i8(a))
    }

    /// [`super::Q8_0::dot`] with AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(row: &[u8], x: &Q8Act) -> f32 {
        sum_blocks::<BYTES, 0>(row, x, |w, a| lanes_avx2(w, a))
    }

    /// [`super::Q8_0::dot`] with AVX-512 VNNI on 256-bit vectors.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_vnni(row: &[u8], x: &Q8Act) -> f32 {
        sum_blocks::<BYTES, -128>(row, x, |w, a| lanes_vnni(w, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of scale `d` (as f16) and integers `q`.
    fn block(d: f32, q: &[i8]) -> Vec<u8> {
        let mut b = half::f16::from_f32(d).to_bits().to_le_bytes().to_vec();
        b.extend(q.iter().map(|&q| q as u8));
        b
    }

    #[test]
    fn layout_and_round_trip() {
        let q: Vec<i8> = (0..32).map(|i| (i * 9 - 128) as i8).collect();
        let b = block(0.5, &q);
        let mut out = [0.0f32; 32];
        Q8_0::dequantize(&b, &mut out);
        for (o, &q) in out.iter().zip(&q) {
            assert_eq!(*o, 0.5 * f32::from(q));
        }
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 13.0) * 0.1).collect();
        let mut b = [0u8; 34];
        Q8_0::quantize(&x, &mut b);
        Q8_0::dequantize(&b, &mut out);
        let d = f16_at(&b).to_f32();
        assert!((d - 1.8 / 127.0).abs() < 1e-5);
        for (o, v) in out.iter().zip(&x) {
            assert!((o - v).abs() <= d * 0.51, "{o} {v}");
        }
        // Halves round away from zero, as ggml's roundf.
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        Q8_0::quantize(&x, &mut b);
        assert_eq!(&b[..5], &[0x00, 0x3c, 127, 3, (-3i8) as u8]);
        Q8_0::quantize(&[0.0; 32], &mut b);
        assert!(b.iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_scales_are_errors() {
        let mut b = block(1.0, &[0; 32]);
        assert!(Q8_0::check_block(&b).is_ok());
        b[..2].copy_from_slice(&0x7c00u16.to_le_bytes());
        let e = Q8_0::check_block(&b).unwrap_err();
        assert!(e.contains("q8_0") && e.contains("infinite"), "{e}");
    }
}
