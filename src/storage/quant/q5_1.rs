//! GGUF's `Q5_1` blocks: 32 weights in 24 bytes, an f16 scale `d` and an f16 minimum `m`
//! (little-endian), then the weights' five-bit integers `q` as 4 bytes `qh` and 16 bytes
//! `qs`, laid out as in [`Q5_0`](super::Q5_0); each weight is `d · q + m`.
//!
//! A row's dot product with a [`Q8Act`] is `Σ_b d_w · d_x · Σ q · a + m · d_x · Σa`: the
//! integer part is [`Q5_0`](super::Q5_0)'s kernel without its offset, the minimums' part
//! takes the activation's block sums.

#[cfg(target_arch = "x86_64")]
use super::lanes::avx512;
use super::lanes::{LaneLayout, LanedQ8};
use super::q5_0::{self, pack, unpack, BITS_BYTES};
use super::q8_act::{check_scale, f16_at, Q8Act};
use super::{for_rows_by_four, BlockFormat};
use crate::ops::Cpu;

/// GGUF's `Q5_1` block format (ggml type 7): 32 weights as an f16 scale, an f16 minimum and
/// 32 five-bit integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q5_1;

/// Weights per block.
const QK: usize = 32;
/// Bytes per block.
const BYTES: usize = 4 + BITS_BYTES;

impl BlockFormat for Q5_1 {
    const NAME: &'static str = "q5_1";
    const VALUES: usize = QK;
    const BYTES: usize = BYTES;
    type Activation = LanedQ8;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(block).to_f32(), f16_at(&block[2..]).to_f32());
        for (o, q) in out[..QK].iter_mut().zip(unpack(&block[4..BYTES])) {
            *o = d * f32::from(q) + m;
        }
    }

    /// ggml's `quantize_row_q5_1_ref`: `d = (max − min) / 31`, `m = min`,
    /// `q = min(31, trunc((x − min) · (1/d) + 0.5))`, `d` and `m` stored as f16.
    fn quantize(values: &[f32], block: &mut [u8]) {
        let values: &[f32; QK] = values[..QK].try_into().expect("32 values");
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in values {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block[..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        block[2..4].copy_from_slice(&half::f16::from_f32(min).to_bits().to_le_bytes());
        let q = values.map(|v| (((v - min) * id + 0.5) as u8).min(31));
        pack(&q, &mut block[4..BYTES]);
    }

    fn quantize_activation_into(cpu: Cpu, x: &[f32], act: &mut LanedQ8) {
        act.quantize_from::<Self>(cpu, x);
    }

    #[track_caller]
    fn dot(cpu: Cpu, row: &[u8], x: &LanedQ8) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if cpu.has_avx512_vbmi() {
            q5_0::check_lengths::<BYTES>(row, &x.q8);
            let rest = |row: &[u8], first| {
                q5_0::dot_blocks_portable::<BYTES, 0>(row, &x.q8, first)
                    + mins_portable_from(row, &x.q8, first)
            };
            // SAFETY: the `Cpu` says this CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and
            // F16C; the lengths match (checked above).
            return unsafe { avx512::dots_and_rest::<Self, 1>([row], x, rest) }[0];
        }
        dot_q8(cpu, row, &x.q8)
    }

    #[track_caller]
    fn dot_rows(
        cpu: Cpu,
        rows: &[u8],
        row_bytes: usize,
        x: &LanedQ8,
        out: &mut [f32],
        stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if cpu.has_avx512_vbmi() {
            assert!(
                row_bytes.is_multiple_of(BYTES) && row_bytes / BYTES * QK == x.len(),
                "Q5_1::dot_rows: rows of {row_bytes} bytes against {} values",
                x.len()
            );
            let rest = |row: &[u8], first| {
                q5_0::dot_blocks_portable::<BYTES, 0>(row, &x.q8, first)
                    + mins_portable_from(row, &x.q8, first)
            };
            // SAFETY: the `Cpu` says this CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and
            // F16C; the rows are as long as the activation (checked above).
            return unsafe { avx512::rows::<Self>(rows, row_bytes, x, out, stride, rest) };
        }
        let x = &x.q8;
        for_rows_by_four(
            rows,
            row_bytes,
            out,
            stride,
            |four| match q5_0::dots4::<BYTES, 0>(cpu, &four, x) {
                Some(dots) => std::array::from_fn(|k| dots[k] + mins(cpu, four[k], x)),
                None => four.map(|row| dot_q8(cpu, row, x)),
            },
            |row| dot_q8(cpu, row, x),
        )
    }

    fn check_block(block: &[u8]) -> Result<(), String> {
        check_scale(block, Self::NAME)?;
        super::q8_k::check_scale(block, 2, "m").map_err(|e| format!("{} block {e}", Self::NAME))
    }
}

impl LaneLayout for Q5_1 {
    const GROUP_BLOCKS: usize = 4;
    const OFFSET: i32 = 0;
    const MINS: bool = true;
}

/// [`Q5_1::dot`] with the 256-bit kernels or the portable code.
#[track_caller]
fn dot_q8(cpu: Cpu, row: &[u8], x: &Q8Act) -> f32 {
    q5_0::dot::<BYTES, 0>(cpu, row, x) + mins(cpu, row, x)
}

/// `Σ_b m(b) · d_x(b) · Σa(b)`: the blocks' minimums against the activation's block sums
/// (`row` and `x` of matching lengths, checked by the integer part).
fn mins(cpu: Cpu, row: &[u8], x: &Q8Act) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if cpu.has_avx2() {
        // SAFETY: the `Cpu` says this CPU has AVX2, FMA and F16C.
        return unsafe { x86::mins_avx2(row, x) };
    }
    let _ = cpu;
    mins_portable(row, x)
}

/// [`mins`] in plain Rust.
fn mins_portable(row: &[u8], x: &Q8Act) -> f32 {
    mins_portable_from(row, x, 0)
}

/// [`mins_portable`] of the blocks from block `first` on.
fn mins_portable_from(row: &[u8], x: &Q8Act, first: usize) -> f32 {
    row[first * BYTES..]
        .chunks_exact(BYTES)
        .zip(x.scales()[first..].iter().zip(&x.sums()[first..]))
        .map(|(w, (&dx, &s))| f16_at(&w[2..]).to_f32() * dx * s as f32)
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::lanes::{avx512, LaneLayout};
    use super::super::q5_0::x86::five_bits_512;
    use super::super::q8_act::{avx2::hsum, f16_at, Q8Act};
    use super::{BYTES, Q5_1};
    use std::arch::x86_64::*;

    /// Gathers a group's 64 bytes of `qs`, block after block.
    const NIBBLES: [u8; 64] = avx512::weight_indices(BYTES, 8, 16);
    /// Gather a group's scales and minimums, one per lane.
    const SCALES: [u8; 64] = avx512::scale_indices(BYTES, 0, 4);
    const MINS: [u8; 64] = avx512::scale_indices(BYTES, 2, 4);

    impl avx512::Unpack for Q5_1 {
        const GROUP_BYTES: usize = Q5_1::GROUP_BLOCKS * BYTES;

        /// The five-bit integers as Q5_0's, with the scales and the minimums.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
        unsafe fn unpack(group: &[u8]) -> avx512::Unpacked {
            let ([head, tail], weights) = five_bits_512::<BYTES>(group, &NIBBLES);
            let gather = |idx| _mm512_permutex2var_epi8(head, avx512::indices(idx), tail);
            avx512::Unpacked {
                weights,
                scales: _mm512_castsi512_si256(gather(&SCALES)),
                mins: _mm512_castsi512_si256(gather(&MINS)),
            }
        }
    }

    /// [`super::mins`] with AVX2, eight blocks at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mins_avx2(row: &[u8], x: &Q8Act) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut ws = row.chunks_exact(8 * BYTES);
        let mut ds = x.scales().chunks_exact(8);
        let mut ss = x.sums().chunks_exact(8);
        for ((w, d), s) in (&mut ws).zip(&mut ds).zip(&mut ss) {
            let bits: [u16; 8] =
                std::array::from_fn(|k| u16::from_le_bytes([w[k * BYTES + 2], w[k * BYTES + 3]]));
            // SAFETY: `bits`, `d` and `s` are eight readable values each (chunks of eight);
            // loadu has no alignment need.
            let (m, d, s) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const __m128i)),
                    _mm256_loadu_ps(d.as_ptr()),
                    _mm256_loadu_si256(s.as_ptr() as *const __m256i),
                )
            };
            acc = _mm256_fmadd_ps(_mm256_mul_ps(m, d), _mm256_cvtepi32_ps(s), acc);
        }
        let rest: f32 = ws
            .remainder()
            .chunks_exact(BYTES)
            .zip(ds.remainder().iter().zip(ss.remainder()))
            .map(|(w, (&dx, &s))| f16_at(&w[2..]).to_f32() * dx * s as f32)
            .sum();
        hsum(acc) + rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        // d = 0.5, m = −2: weight i = 0.5 · q_i − 2, here q_i = i.
        let q: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut b = [0u8; BYTES];
        b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(-2.0).to_bits().to_le_bytes());
        pack(&q, &mut b[4..]);
        assert_eq!(&b[4..8], &0xffff_0000u32.to_le_bytes());
        let mut out = [0.0f32; 32];
        Q5_1::dequantize(&b, &mut out);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, 0.5 * i as f32 - 2.0);
        }
        // Values on that grid quantize back to the same block.
        let mut again = [0u8; BYTES];
        Q5_1::quantize(&out, &mut again);
        assert_eq!(again, b);
        // The minimum gets q = 0, the maximum q = 31.
        let x: Vec<f32> = (0..32).map(|i| ((i * 7) % 32) as f32 * 0.3 - 1.0).collect();
        Q5_1::quantize(&x, &mut b);
        assert_eq!(f16_at(&b[2..]).to_f32(), half::f16::from_f32(-1.0).to_f32());
        let q = unpack(&b[4..]);
        for (q, v) in q.iter().zip(&x) {
            assert_eq!(*q as f32, ((v + 1.0) / 0.3).round());
        }
        // A constant block: d = 0, m the value, every q = 0.
        Q5_1::quantize(&[3.0; 32], &mut b);
        assert_eq!(f16_at(&b).to_f32(), 0.0);
        assert_eq!(f16_at(&b[2..]).to_f32(), 3.0);
        assert!(b[4..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_scales_and_minimums_are_errors() {
        let mut b = [0u8; BYTES];
        assert!(Q5_1::check_block(&b).is_ok());
        b[..2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let e = Q5_1::check_block(&b).unwrap_err();
        assert!(e.contains("q5_1") && e.contains("scale d is NaN"), "{e}");
        b[..2].copy_from_slice(&0x3c00u16.to_le_bytes());
        b[2..4].copy_from_slice(&0xfc00u16.to_le_bytes());
        let e = Q5_1::check_block(&b).unwrap_err();
        assert!(
            e.contains("q5_1") && e.contains("scale m is infinite"),
            "{e}"
        );
    }
}
