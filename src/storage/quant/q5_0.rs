//! GGUF's `Q5_0` blocks: 32 weights in 22 bytes, an f16 scale `d` (little-endian), then the
//! weights' five-bit integers `q` as 4 bytes `qh` and 16 bytes `qs`; each weight is
//! `d · (q − 16)`.
//!
//! The five-bit integers are laid out as in [`Q5_1`](super::Q5_1), which stores a minimum
//! between the scale and them: `qh` is a little-endian u32 whose bit `i` is the fifth bit of
//! weight `i`; `qs` holds the low four bits as [`Q4_0`](super::Q4_0) holds its nibbles (byte
//! `j`: weight `j` in the low nibble, weight `16 + j` in the high one). This module reads and
//! writes that layout and runs the integer dot products for both formats.

#[cfg(target_arch = "x86_64")]
use super::lanes::avx512;
use super::lanes::{LaneLayout, LanedQ8};
use super::q8_act::{check_scale, f16_at, symmetric_scale, Q8Act, Q8_ACT_BLOCK};
use super::{for_rows_by_four, BlockFormat};
use crate::ops::Cpu;

/// GGUF's `Q5_0` block format (ggml type 6): 32 weights as an f16 scale and 32 five-bit
/// integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q5_0;

/// Weights per block.
const QK: usize = 32;
/// Bytes of a block's five-bit integers (`qh` then `qs`).
pub(super) const BITS_BYTES: usize = 4 + QK / 2;
/// Bytes per block.
const BYTES: usize = 2 + BITS_BYTES;

impl BlockFormat for Q5_0 {
    const NAME: &'static str = "q5_0";
    const VALUES: usize = QK;
    const BYTES: usize = BYTES;
    type Activation = LanedQ8;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block).to_f32();
        for (o, q) in out[..QK].iter_mut().zip(unpack(&block[2..BYTES])) {
            *o = f32::from(q as i8 - 16) * d;
        }
    }

    /// ggml's `quantize_row_q5_0_ref`: `max` the value of largest magnitude (the first such),
    /// `d = max / −16`, `q = min(31, trunc(x · (1/d) + 16.5))`, `d` stored as f16.
    fn quantize(values: &[f32], block: &mut [u8]) {
        let values: &[f32; QK] = values[..QK].try_into().expect("32 values");
        let id = symmetric_scale(values, 16.0, block);
        pack(
            &values.map(|v| ((v * id + 16.5) as u8).min(31)),
            &mut block[2..BYTES],
        );
    }

    fn quantize_activation_into(cpu: Cpu, x: &[f32], act: &mut LanedQ8) {
        act.quantize_from::<Self>(cpu, x);
    }

    #[track_caller]
    fn dot(cpu: Cpu, row: &[u8], x: &LanedQ8) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if cpu.has_avx512_vbmi() {
            check_lengths::<BYTES>(row, &x.q8);
            let rest = |row: &[u8], first| dot_blocks_portable::<BYTES, -16>(row, &x.q8, first);
            // SAFETY: the `Cpu` says this CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and
            // F16C; the lengths match (checked above).
            return unsafe { avx512::dots_and_rest::<Self, 1>([row], x, rest) }[0];
        }
        dot::<BYTES, -16>(cpu, row, &x.q8)
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
                "Q5_0::dot_rows: rows of {row_bytes} bytes against {} values",
                x.len()
            );
            let rest = |row: &[u8], first| dot_blocks_portable::<BYTES, -16>(row, &x.q8, first);
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
            |four| {
                dots4::<BYTES, -16>(cpu, &four, x)
                    .unwrap_or_else(|| four.map(|row| dot::<BYTES, -16>(cpu, row, x)))
            },
            |row| dot::<BYTES, -16>(cpu, row, x),
        )
    }

    fn check_block(block: &[u8]) -> Result<(), String> {
        check_scale(block, Self::NAME)
    }
}

impl LaneLayout for Q5_0 {
    const GROUP_BLOCKS: usize = 4;
    const OFFSET: i32 = -16;
}

/// The 32 five-bit integers of `bits` (a block's `qh` then `qs`, [`BITS_BYTES`] bytes), in
/// the weights' order.
#[inline]
pub(super) fn unpack(bits: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes(bits[..4].try_into().expect("4 bytes of qh"));
    let qs = &bits[4..BITS_BYTES];
    std::array::from_fn(|i| {
        let low = if i < QK / 2 {
            qs[i] & 0x0f
        } else {
            qs[i - QK / 2] >> 4
        };
        low | (((qh >> i) & 1) as u8) << 4
    })
}

/// Stores the integers `q` (each below 32) into `bits` as `qh` then `qs` ([`BITS_BYTES`]
/// bytes).
#[inline]
pub(super) fn pack(q: &[u8; QK], bits: &mut [u8]) {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |qh, (i, &q)| qh | u32::from(q >> 4) << i);
    bits[..4].copy_from_slice(&qh.to_le_bytes());
    let (lo, hi) = q.split_at(QK / 2);
    for ((b, &l), &h) in bits[4..BITS_BYTES].iter_mut().zip(lo).zip(hi) {
        *b = (l & 0x0f) | (h & 0x0f) << 4;
    }
}

/// `Σ_b d_w(b) · d_x(b) · Σ_i (q_i + OFFSET) · a_i` over the blocks of `row` (`B` bytes each:
/// the f16 scale first, the five-bit integers in the last [`BITS_BYTES`]) against `x`: the
/// whole of [`Q5_0::dot`] (`OFFSET` −16), the part of [`Q5_1::dot`](super::Q5_1) without
/// its minimums (`OFFSET` 0).
#[track_caller]
pub(super) fn dot<const B: usize, const OFFSET: i32>(cpu: Cpu, row: &[u8], x: &Q8Act) -> f32 {
    check_lengths::<B>(row, x);
    #[cfg(target_arch = "x86_64")]
    {
        if cpu.has_avx512_vnni() {
            // SAFETY: the `Cpu` says this CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI;
            // the lengths match (checked above).
            return unsafe { x86::dot_vnni::<B, OFFSET>(row, x) };
        }
        if cpu.has_avx2() {
            // SAFETY: the `Cpu` says this CPU has AVX2, FMA and F16C; the lengths match.
            return unsafe { x86::dot_avx2::<B, OFFSET>(row, x) };
        }
    }
    let _ = cpu;
    dot_portable::<B, OFFSET>(row, x)
}

/// [`dot`] of four rows at once where `cpu` has a kernel for it and `rows` holds four rows;
/// `None` otherwise.
#[track_caller]
pub(super) fn dots4<const B: usize, const OFFSET: i32>(
    cpu: Cpu,
    rows: &[&[u8]],
    x: &Q8Act,
) -> Option<[f32; 4]> {
    #[cfg(target_arch = "x86_64")]
    if let Ok(four) = <[&[u8]; 4]>::try_from(rows) {
        for row in four {
            check_lengths::<B>(row, x);
        }
        if cpu.has_avx512_vnni() {
            // SAFETY: the `Cpu` says this CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI;
            // the lengths match (checked above).
            return Some(unsafe { x86::dots4_vnni::<B, OFFSET>(four, x) });
        }
        if cpu.has_avx2() {
            // SAFETY: the `Cpu` says this CPU has AVX2, FMA and F16C; the lengths match.
            return Some(unsafe { x86::dots4_avx2::<B, OFFSET>(four, x) });
        }
    }
    let _ = (cpu, rows, x);
    None
}

/// Panics unless `row` is whole `B`-byte blocks of as many values as `x` holds.
#[track_caller]
pub(super) fn check_lengths<const B: usize>(row: &[u8], x: &Q8Act) {
    assert!(
        row.len().is_multiple_of(B) && row.len() / B * QK == x.len(),
        "five-bit blocks: {} bytes of {B}-byte blocks against {} values",
        row.len(),
        x.len()
    );
}

/// [`dot`] in plain Rust: each block's integer sum times `d_w · d_x`, added in f32.
fn dot_portable<const B: usize, const OFFSET: i32>(row: &[u8], x: &Q8Act) -> f32 {
    dot_blocks_portable::<B, OFFSET>(row, x, 0)
}

/// [`dot_portable`] of the blocks from block `first` on.
pub(super) fn dot_blocks_portable<const B: usize, const OFFSET: i32>(
    row: &[u8],
    x: &Q8Act,
    first: usize,
) -> f32 {
    row[first * B..]
        .chunks_exact(B)
        .zip(x.qs()[first * Q8_ACT_BLOCK..].chunks_exact(Q8_ACT_BLOCK))
        .zip(&x.scales()[first..])
        .map(|((w, a), &dx)| {
            let sum: i32 = unpack(&w[B - BITS_BYTES..])
                .iter()
                .zip(a)
                .map(|(&q, &a)| (i32::from(q) + OFFSET) * i32::from(a))
                .sum();
            f16_at(w).to_f32() * dx * sum as f32
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::lanes::{avx512, LaneLayout};
    use super::super::q8_act::{avx2::*, Q8Act};
    use super::{BITS_BYTES, BYTES, Q5_0};
    use std::arch::x86_64::*;

    /// Gathers a group's 64 bytes of `qs`, block after block.
    const NIBBLES: [u8; 64] = avx512::weight_indices(BYTES, 6, 16);
    /// Gathers a group's scales, one per lane (from both vectors: the fourth block's scale
    /// is past the first 64 bytes).
    const SCALES: [u8; 64] = avx512::scale_indices(BYTES, 0, 4);

    impl avx512::Unpack for Q5_0 {
        const GROUP_BYTES: usize = Q5_0::GROUP_BLOCKS * BYTES;

        /// The low nibbles (each block's weights 0..16) in the first vector, the high ones
        /// (16..32) in the second, each with its fifth bit from `qh` added as 16.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
        unsafe fn unpack(group: &[u8]) -> avx512::Unpacked {
            let ([head, tail], weights) = five_bits_512::<BYTES>(group, &NIBBLES);
            let scales = _mm512_permutex2var_epi8(head, avx512::indices(&SCALES), tail);
            avx512::Unpacked {
                weights,
                scales: _mm512_castsi512_si256(scales),
                mins: _mm256_setzero_si256(),
            }
        }
    }

    /// The four `B`-byte blocks of `group` (each ending in its five-bit integers, `qh` then
    /// `qs`) read as two vectors, and their integers gathered as Q4_0's nibbles are (by the
    /// permute indices `nibbles`: weights 0..16 of each block in the first vector, 16..32 in
    /// the second), each with its fifth bit from `qh` added as 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(in super::super) fn five_bits_512<const B: usize>(
        group: &[u8],
        nibbles: &'static [u8; 64],
    ) -> ([__m512i; 2], [__m512i; 2]) {
        let (vectors, [lo, hi]) = avx512::split_nibbles(&group[..4 * B], nibbles);
        // Bit i of block k's qh is the fifth bit of its weight i: weights 0..16 are bytes
        // 16 k.. of the first vector, weights 16..32 those of the second.
        let (mut first, mut second) = (0u64, 0u64);
        for k in 0..4 {
            let at = (k + 1) * B - BITS_BYTES;
            let qh = u32::from_le_bytes(group[at..at + 4].try_into().expect("4 bytes"));
            first |= u64::from(qh & 0xffff) << (16 * k);
            second |= u64::from(qh >> 16) << (16 * k);
        }
        let sixteen = _mm512_set1_epi8(16);
        let lo = _mm512_mask_add_epi8(lo, first, lo, sixteen);
        let hi = _mm512_mask_add_epi8(hi, second, hi, sixteen);
        (vectors, [lo, hi])
    }

    /// The five-bit integers of a `B`-byte block (in its last [`BITS_BYTES`] bytes) as 32
    /// bytes in the weights' order: the nibbles of `qs`, and bit `i` of `qh` spread to byte
    /// `i` (each byte of `qh` copied to eight bytes, each testing its own bit) as `0x10`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn five_bits<const B: usize>(w: &[u8]) -> __m256i {
        let bits = &w[B - BITS_BYTES..B];
        let low = nibbles(bits[4..].try_into().expect("16"));
        let qh = u32::from_le_bytes(bits[..4].try_into().expect("4"));
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }

    /// A block's products `q · a` (integers unsigned) in eight i32 lanes, with AVX2's
    /// `maddubs` (a pair of products, at most 2 · 31 · 127, fits its i16).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn lanes_avx2<const B: usize>(w: &[u8], a: &[i8]) -> __m256i {
        let pairs = _mm256_maddubs_epi16(five_bits::<B>(w), load32_i8(a));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// A block's products `q · a` in eight i32 lanes, with AVX-512 VNNI's `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn lanes_vnni<const B: usize>(w: &[u8], a: &[i8]) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), five_bits::<B>(w), load32_i8(a))
    }

    /// [`super::dot`] with AVX2: the products `q · a`, plus `OFFSET · Σa` per block.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2<const B: usize, const OFFSET: i32>(row: &[u8], x: &Q8Act) -> f32 {
        sum_blocks::<B, OFFSET>(row, x, |w, a| lanes_avx2::<B>(w, a))
    }

    /// Four rows' [`super::dot`] with AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots4_avx2<const B: usize, const OFFSET: i32>(
        rows: [&[u8]; 4],
        x: &Q8Act,
    ) -> [f32; 4] {
        sum_blocks_rows::<B, OFFSET, 4>(rows, x, |w, a| lanes_avx2::<B>(w, a))
    }

    /// [`super::dot`] with AVX-512 VNNI on 256-bit vectors.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_vnni<const B: usize, const OFFSET: i32>(row: &[u8], x: &Q8Act) -> f32 {
        sum_blocks::<B, OFFSET>(row, x, |w, a| lanes_vnni::<B>(w, a))
    }

    /// Four rows' [`super::dot`] with AVX-512 VNNI on 256-bit vectors.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dots4_vnni<const B: usize, const OFFSET: i32>(
        rows: [&[u8]; 4],
        x: &Q8Act,
    ) -> [f32; 4] {
        sum_blocks_rows::<B, OFFSET, 4>(rows, x, |w, a| lanes_vnni::<B>(w, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        // Weight i: low nibble of byte i (i < 16) or the high nibble of byte i − 16, fifth
        // bit bit i of qh. Here q_i = 31 − i.
        let q: [u8; 32] = std::array::from_fn(|i| 31 - i as u8);
        let mut b = half::f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
        b.extend(0xffffu32.to_le_bytes());
        b.extend((0..16u8).map(|j| (15 - j) | ((15 - j) << 4)));
        assert_eq!(unpack(&b[2..]), q);
        let mut bits = [0u8; BITS_BYTES];
        pack(&q, &mut bits);
        assert_eq!(&bits[..], &b[2..]);
        let mut out = [0.0f32; 32];
        Q5_0::dequantize(&b, &mut out);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, 0.5 * (15.0 - i as f32));
        }
        // The value of largest magnitude gets q = 0 (d = max / −16); its opposite would be
        // 32, kept at 31.
        let mut x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.1).collect();
        x[3] = -8.0;
        let mut b = [0u8; BYTES];
        Q5_0::quantize(&x, &mut b);
        assert_eq!(f16_at(&b).to_f32(), 0.5);
        assert_eq!(unpack(&b[2..])[3], 0);
        Q5_0::dequantize(&b, &mut out);
        for (o, v) in out.iter().zip(&x) {
            assert!((o - v).abs() <= 0.5 * 0.51, "{o} {v}");
        }
        x[3] = 8.0;
        x[9] = -8.0;
        Q5_0::quantize(&x, &mut b);
        assert_eq!(f16_at(&b).to_f32(), -0.5);
        assert_eq!((unpack(&b[2..])[3], unpack(&b[2..])[9]), (0, 31));
        // A block of zeros: d = 0 / −16 = −0 (as ggml's reference), every q = 16.
        Q5_0::quantize(&[0.0; 32], &mut b);
        assert_eq!(&b[..6], &[0, 0x80, 0xff, 0xff, 0xff, 0xff]);
        assert!(b[6..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_scales_are_errors() {
        let mut b = [0u8; BYTES];
        assert!(Q5_0::check_block(&b).is_ok());
        b[..2].copy_from_slice(&0x7c00u16.to_le_bytes());
        let e = Q5_0::check_block(&b).unwrap_err();
        assert!(
            e.contains("q5_0") && e.contains("scale d is infinite"),
            "{e}"
        );
    }
}
