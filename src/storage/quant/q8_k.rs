//! llama.cpp's Q8_K activation blocks: 256 values as `i8` with one `f32` scale and the sums of
//! each 16 of them, the form an activation vector takes for the K-quant dot products
//! ([`super::Q4K`], [`super::Q5K`], [`super::Q6K`]).
//!
//! Also the helpers the K-quant formats share: ggml's rounding and f16 scale reading.

/// Values in a K-quant super-block (and in a Q8_K block).
pub const QK_K: usize = 256;

/// One Q8_K block: `x ≈ d · qs`, as llama.cpp's `block_q8_K`.
#[derive(Clone, Debug, PartialEq)]
pub struct Q8KBlock {
    /// The scale.
    pub d: f32,
    /// The 256 quantized values, each in `-127..=127`.
    pub qs: [i8; QK_K],
    /// `bsums[j]` = the sum of `qs[16 j .. 16 j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

/// An activation vector as Q8_K blocks, one per 256 values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Q8KActivation {
    /// The blocks, in order.
    pub blocks: Vec<Q8KBlock>,
}

impl Q8KActivation {
    /// `x` (a multiple of 256 values long) quantized as llama.cpp's `quantize_row_q8_K`: per
    /// block the scale `max / -127` (`max` the value of largest magnitude), values rounded
    /// to nearest (ties to even), and the sums of each 16.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of 256.
    #[track_caller]
    pub fn quantize(x: &[f32]) -> Self {
        let mut act = Q8KActivation::default();
        act.quantize_from(x);
        act
    }

    /// [`Q8KActivation::quantize`] into this one, reusing its memory.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of 256.
    #[track_caller]
    pub fn quantize_from(&mut self, x: &[f32]) {
        assert!(
            x.len().is_multiple_of(QK_K),
            "Q8_K: {} values are not whole 256-value blocks",
            x.len()
        );
        self.blocks.clear();
        self.blocks.extend(x.chunks_exact(QK_K).map(quantize_block));
    }

    /// The values the blocks stand for (`d · q`).
    pub fn dequantize(&self) -> Vec<f32> {
        self.blocks
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| b.d * f32::from(q)))
            .collect()
    }

    /// Values (a multiple of 256).
    pub fn len(&self) -> usize {
        self.blocks.len() * QK_K
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// One block of 256 values as Q8_K.
fn quantize_block(x: &[f32]) -> Q8KBlock {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut block = Q8KBlock {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
    if amax == 0.0 {
        return block;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in block.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (s, group) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
        *s = group.iter().map(|&q| i16::from(q)).sum();
    }
    block.d = 1.0 / iscale;
    block
}

/// ggml's `nearest_int`: `v` rounded to the nearest integer, ties to even (exact for
/// `|v| ≤ 4194303`; larger or non-finite values give an unspecified integer, never a panic).
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The little-endian f16 at `bytes[at..at + 2]`, widened.
#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `v` rounded to f16 as ggml stores a scale, little-endian.
#[inline]
pub(crate) fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// `Err` naming the scale `name` (at `bytes[at..at + 2]`) if it is NaN or infinite.
pub(crate) fn check_scale(bytes: &[u8], at: usize, name: &str) -> Result<(), String> {
    let v = half::f16::from_le_bytes([bytes[at], bytes[at + 1]]);
    if v.is_nan() {
        Err(format!("scale {name} is NaN"))
    } else if v.is_infinite() {
        Err(format!("scale {name} is infinite ({v})"))
    } else {
        Ok(())
    }
}

/// The sum of the eight i32 lanes of `v` (AVX2).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_i32_avx2(v: std::arch::x86_64::__m256i) -> i32 {
    use std::arch::x86_64::*;
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(126.9), 127);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn quantize_scales_the_largest_magnitude_to_127() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let a = Q8KActivation::quantize(&x);
        assert_eq!(a.len(), 512);
        for (b, xb) in a.blocks.iter().zip(x.chunks_exact(QK_K)) {
            let max = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(b.qs.iter().any(|&q| q.unsigned_abs() == 127));
            for (j, s) in b.bsums.iter().enumerate() {
                let want: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
                assert_eq!(*s as i32, want);
            }
            for (&q, &v) in b.qs.iter().zip(xb) {
                assert!((b.d * q as f32 - v).abs() <= max / 127.0 * 0.5001);
            }
        }
        let zero = Q8KActivation::quantize(&[0.0; 256]);
        assert_eq!(zero.blocks[0].d, 0.0);
        assert!(zero.dequantize().iter().all(|&v| v == 0.0));
    }
}
