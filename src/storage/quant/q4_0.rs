//! GGUF's `Q4_0` blocks: 32 weights in 18 bytes, an f16 scale `d` (little-endian) then 16
//! bytes of 4-bit `q`: the low nibbles are weights 0..16, the high nibbles weights 16..32;
//! each weight is `d · (q − 8)`.

use super::lanes::{LaneLayout, LanedQ8};
use super::q8_act::{check_scale, f16_at, symmetric_scale, Q8Act, Q8_ACT_BLOCK};
use super::{dot_rows_each, for_rows, BlockFormat};
use crate::ops::Cpu;

/// GGUF's `Q4_0` block format (ggml type 2): 32 weights as an f16 scale and 32 nibbles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q4_0;

/// Weights per block.
const QK: usize = 32;
/// Bytes per block.
const BYTES: usize = 2 + QK / 2;

impl BlockFormat for Q4_0 {
    const NAME: &'static str = "q4_0";
    const VALUES: usize = QK;
    const BYTES: usize = BYTES;
    type Activation = LanedQ8;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block).to_f32();
        let (lo, hi) = out[..QK].split_at_mut(QK / 2);
        for ((l, h), &b) in lo.iter_mut().zip(hi).zip(&block[2..BYTES]) {
            *l = f32::from((b & 0x0f) as i8 - 8) * d;
            *h = f32::from((b >> 4) as i8 - 8) * d;
        }
    }

    /// ggml's `quantize_row_q4_0_ref`: `max` the value of largest magnitude (the first
    /// such), `d = max / −8`, `q = min(15, trunc(x · (1/d) + 8.5))`, `d` stored as f16.
    fn quantize(values: &[f32], block: &mut [u8]) {
        let values = &values[..QK];
        let id = symmetric_scale(values, 8.0, block);
        let q = |v: f32| ((v * id + 8.5) as u8).min(15);
        let (lo, hi) = values.split_at(QK / 2);
        for ((b, &l), &h) in block[2..BYTES].iter_mut().zip(lo).zip(hi) {
            *b = q(l) | (q(h) << 4);
        }
    }

    fn quantize_activation_into(cpu: Cpu, x: &[f32], act: &mut LanedQ8) {
        act.quantize_from::<Self>(cpu, x);
    }

    #[track_caller]
    fn dot(cpu: Cpu, row: &[u8], x: &LanedQ8) -> f32 {
        assert!(
            row.len().is_multiple_of(BYTES) && row.len() / BYTES * QK == x.len(),
            "Q4_0::dot: {} bytes of blocks against {} values",
            row.len(),
            x.len()
        );
        #[cfg(target_arch = "x86_64")]
        if cpu.has_avx512_vbmi() {
            // SAFETY: the `Cpu` says this CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and
            // F16C; the lengths match (checked above).
            return unsafe { x86::dots_vbmi([row], [x]) }[0][0];
        }
        let x = &x.q8;
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

    #[track_caller]
    fn dot_rows(
        cpu: Cpu,
        rows: &[u8],
        row_bytes: usize,
        x: &LanedQ8,
        out: &mut [f32],
        stride: usize,
    ) {
        assert!(
            row_bytes.is_multiple_of(BYTES) && row_bytes / BYTES * QK == x.len(),
            "Q4_0::dot_rows: rows of {row_bytes} bytes against {} values",
            x.len()
        );
        #[cfg(target_arch = "x86_64")]
        {
            if cpu.has_avx512_vbmi() {
                // SAFETY: the `Cpu` says this CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and
                // F16C; the rows are as long as the activation (checked above).
                return unsafe { x86::rows_vbmi(rows, row_bytes, x, out, stride) };
            }
            if cpu.has_avx512_vnni() {
                // SAFETY: the `Cpu` says this CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI;
                // the lengths match (checked above).
                return unsafe { x86::rows_vnni(rows, row_bytes, &x.q8, out, stride) };
            }
            if cpu.has_avx2() {
                // SAFETY: the `Cpu` says this CPU has AVX2, FMA and F16C; the lengths match.
                return unsafe { x86::rows_avx2(rows, row_bytes, &x.q8, out, stride) };
            }
        }
        for_rows(rows, row_bytes, out, stride, |row| dot_portable(row, &x.q8));
    }

    #[track_caller]
    fn dot_rows_many(cpu: Cpu, rows: &[u8], row_bytes: usize, xs: &[LanedQ8], out: &mut [f32]) {
        // One activation through `dot_rows`, which is faster for it than the pairs' loop.
        #[cfg(target_arch = "x86_64")]
        if cpu.has_avx512_vbmi() && row_bytes > 0 && xs.len() > 1 {
            for x in xs {
                assert!(
                    row_bytes.is_multiple_of(BYTES) && row_bytes / BYTES * QK == x.len(),
                    "Q4_0::dot_rows_many: rows of {row_bytes} bytes against {} values",
                    x.len()
                );
            }
            assert!(
                rows.len().is_multiple_of(row_bytes)
                    && out.len() >= rows.len() / row_bytes * xs.len(),
                "Q4_0::dot_rows_many: {} bytes of rows, {} outputs",
                rows.len(),
                out.len()
            );
            // SAFETY: the `Cpu` says this CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and
            // F16C; the shapes are as checked above.
            return unsafe { x86::rows_many_vbmi(rows, row_bytes, xs, out) };
        }
        dot_rows_each::<Self>(cpu, rows, row_bytes, xs, out);
    }

    fn check_block(block: &[u8]) -> Result<(), String> {
        check_scale(block, Self::NAME)
    }
}

impl LaneLayout for Q4_0 {
    const GROUP_BLOCKS: usize = 4;
    const OFFSET: i32 = -8;
}

/// The integer dot product of one block with 32 activation integers.
#[inline]
fn block_dot(block: &[u8], a: &[i8]) -> i32 {
    let (lo, hi) = a.split_at(QK / 2);
    block[2..BYTES]
        .iter()
        .zip(lo.iter().zip(hi))
        .map(|(&b, (&l, &h))| {
            i32::from((b & 0x0f) as i8 - 8) * i32::from(l)
                + i32::from((b >> 4) as i8 - 8) * i32::from(h)
        })
        .sum()
}

/// [`Q4_0::dot`] in plain Rust: each block's integer sum times `d_w · d_x`, added in f32.
fn dot_portable(row: &[u8], x: &Q8Act) -> f32 {
    dot_blocks_portable(row, x, 0)
}

/// The portable dot of `row`'s blocks from block `first` on with the activation's.
fn dot_blocks_portable(row: &[u8], x: &Q8Act, first: usize) -> f32 {
    row[first * BYTES..]
        .chunks_exact(BYTES)
        .zip(x.qs()[first * Q8_ACT_BLOCK..].chunks_exact(Q8_ACT_BLOCK))
        .zip(&x.scales()[first..])
        .map(|((w, a), &dx)| f16_at(w).to_f32() * dx * block_dot(w, a) as f32)
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::for_rows_by_four;
    use super::super::lanes::{avx512, LaneLayout, LanedQ8};
    use super::super::q8_act::{avx2::*, Q8Act};
    use super::{BYTES, Q4_0};
    use std::arch::x86_64::*;

    /// Gathers a group's 64 bytes of nibbles, block after block.
    const NIBBLES: [u8; 64] = avx512::weight_indices(BYTES, 2, 16);
    /// Gathers a group's scales, one per lane.
    const SCALES: [u8; 64] = avx512::scale_indices(BYTES, 0, 4);

    impl avx512::Unpack for Q4_0 {
        const GROUP_BYTES: usize = Q4_0::GROUP_BLOCKS * BYTES;

        /// The low nibbles (each block's weights 0..16) in the first vector, the high ones
        /// (16..32) in the second.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
        unsafe fn unpack(group: &[u8]) -> avx512::Unpacked {
            let ([head, _], lo_hi) = avx512::split_nibbles(&group[..Self::GROUP_BYTES], &NIBBLES);
            let scales = _mm512_permutexvar_epi8(avx512::indices(&SCALES), head);
            avx512::Unpacked {
                weights: lo_hi,
                scales: _mm512_castsi512_si256(scales),
                mins: _mm256_setzero_si256(),
            }
        }
    }

    /// `R` rows' [`super::Q4_0::dot`] with `V` activations, with the 512-bit kernels: whole
    /// groups of four blocks, then the rest in plain Rust.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VL, VNNI and VBMI, AVX2, FMA and F16C; each row is
    /// as long as every activation.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(super) unsafe fn dots_vbmi<const R: usize, const V: usize>(
        rows: [&[u8]; R],
        xs: [&LanedQ8; V],
    ) -> [[f32; V]; R] {
        // SAFETY: as this function's.
        let mut dots = unsafe { avx512::dots::<Q4_0, R, V>(rows, xs.map(|x| &x.lanes)) };
        for (v, x) in xs.iter().enumerate() {
            let done = x.lanes.groups() * Q4_0::GROUP_BLOCKS;
            if done < x.q8.scales().len() {
                for (d, row) in dots.iter_mut().zip(rows) {
                    d[v] += super::dot_blocks_portable(row, &x.q8, done);
                }
            }
        }
        dots
    }

    /// `out[i · b + j]` = row `i` of `rows` · activation `j` of the `b = V` activations
    /// `xs` from the `j0`-th on, with the 512-bit kernels, four rows at a time.
    ///
    /// # Safety
    /// As [`dots_vbmi`]'s.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    unsafe fn rows_times<const V: usize>(
        rows: &[u8],
        row_bytes: usize,
        xs: [&LanedQ8; V],
        out: &mut [f32],
        b: usize,
        j0: usize,
    ) {
        let count = rows.len() / row_bytes;
        let row = |i: usize| &rows[i * row_bytes..(i + 1) * row_bytes];
        let mut i = 0;
        while i < count {
            if i + 4 <= count {
                // SAFETY: as this function's.
                let dots = unsafe { dots_vbmi::<4, V>(std::array::from_fn(|k| row(i + k)), xs) };
                for (k, d) in dots.iter().enumerate() {
                    out[(i + k) * b + j0..][..V].copy_from_slice(d);
                }
                i += 4;
            } else {
                // SAFETY: as this function's.
                let dots = unsafe { dots_vbmi::<1, V>([row(i)], xs) };
                out[i * b + j0..][..V].copy_from_slice(&dots[0]);
                i += 1;
            }
        }
    }

    /// [`super::Q4_0::dot_rows_many`] with the 512-bit kernels: two activations at a time,
    /// each group of weights unpacked once for both.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VL, VNNI and VBMI, AVX2, FMA and F16C; the rows are
    /// whole rows of `row_bytes` (not 0), as long as every activation.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(super) unsafe fn rows_many_vbmi(
        rows: &[u8],
        row_bytes: usize,
        xs: &[LanedQ8],
        out: &mut [f32],
    ) {
        let b = xs.len();
        let pairs = xs.chunks_exact(2);
        let last = pairs.remainder().first();
        for (p, pair) in pairs.enumerate() {
            // SAFETY: as this function's.
            unsafe { rows_times(rows, row_bytes, [&pair[0], &pair[1]], out, b, 2 * p) };
        }
        if let Some(x) = last {
            // SAFETY: as this function's.
            unsafe { rows_times(rows, row_bytes, [x], out, b, b - 1) };
        }
    }

    /// A block's 32 nibbles as bytes `0..16` in the weights' order (low nibbles first).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block_nibbles(w: &[u8]) -> __m256i {
        nibbles(w[2..BYTES].try_into().expect("16"))
    }

    /// A block's products `q · a` (nibbles unsigned) in eight i32 lanes, with AVX2's
    /// `maddubs`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn lanes_avx2(w: &[u8], a: &[i8]) -> __m256i {
        let pairs = _mm256_maddubs_epi16(block_nibbles(w), load32_i8(a));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// A block's products `q · a` in eight i32 lanes, with AVX-512 VNNI's `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn lanes_vnni(w: &[u8], a: &[i8]) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), block_nibbles(w), load32_i8(a))
    }

    /// [`super::Q4_0::dot`] with AVX2: the products `q · a`, less `8 · Σa` per block for the
    /// weights' `q − 8`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(row: &[u8], x: &Q8Act) -> f32 {
        sum_blocks::<BYTES, -8>(row, x, |w, a| lanes_avx2(w, a))
    }

    /// [`super::Q4_0::dot_rows`] with AVX2, four rows at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; the rows are as long as the activation.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_avx2(
        rows: &[u8],
        row_bytes: usize,
        x: &Q8Act,
        out: &mut [f32],
        stride: usize,
    ) {
        for_rows_by_four(
            rows,
            row_bytes,
            out,
            stride,
            |four| sum_blocks_rows::<BYTES, -8, 4>(four, x, |w, a| lanes_avx2(w, a)),
            |row| sum_blocks::<BYTES, -8>(row, x, |w, a| lanes_avx2(w, a)),
        )
    }

    /// [`super::Q4_0::dot`] with AVX-512 VNNI on 256-bit vectors.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_vnni(row: &[u8], x: &Q8Act) -> f32 {
        sum_blocks::<BYTES, -8>(row, x, |w, a| lanes_vnni(w, a))
    }

    /// [`super::Q4_0::dot_rows`] with AVX-512 VNNI on 256-bit vectors, four rows at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI; the rows are as
    /// long as the activation.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_vnni(
        rows: &[u8],
        row_bytes: usize,
        x: &Q8Act,
        out: &mut [f32],
        stride: usize,
    ) {
        for_rows_by_four(
            rows,
            row_bytes,
            out,
            stride,
            |four| sum_blocks_rows::<BYTES, -8, 4>(four, x, |w, a| lanes_vnni(w, a)),
            |row| sum_blocks::<BYTES, -8>(row, x, |w, a| lanes_vnni(w, a)),
        )
    }

    /// [`super::Q4_0::dot_rows`] with the 512-bit kernels, four rows at a time.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VL, VNNI and VBMI, AVX2, FMA and F16C; the rows are
    /// as long as the activation.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(super) unsafe fn rows_vbmi(
        rows: &[u8],
        row_bytes: usize,
        x: &LanedQ8,
        out: &mut [f32],
        stride: usize,
    ) {
        // SAFETY (both): as this function's.
        for_rows_by_four(
            rows,
            row_bytes,
            out,
            stride,
            |four| unsafe { dots_vbmi(four, [x]) }.map(|d| d[0]),
            |row| unsafe { dots_vbmi([row], [x]) }[0][0],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        // Byte i holds weight i (low nibble) and weight 16 + i (high nibble).
        let mut b = half::f16::from_f32(0.25).to_bits().to_le_bytes().to_vec();
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let mut out = [0.0f32; 32];
        Q4_0::dequantize(&b, &mut out);
        for i in 0..16 {
            assert_eq!(out[i], 0.25 * (i as f32 - 8.0));
            assert_eq!(out[16 + i], 0.25 * (7.0 - i as f32));
        }
        // The value of largest magnitude gets q = 0 (d = max / −8); its opposite would be 16,
        // kept at 15.
        let mut x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.1).collect();
        x[3] = -4.0;
        let mut b = [0u8; 18];
        Q4_0::quantize(&x, &mut b);
        assert_eq!(f16_at(&b).to_f32(), 0.5);
        assert_eq!(b[2 + 3] & 0x0f, 0);
        Q4_0::dequantize(&b, &mut out);
        for (o, v) in out.iter().zip(&x) {
            assert!((o - v).abs() <= 0.5 * 0.51, "{o} {v}");
        }
        x[3] = 4.0;
        Q4_0::quantize(&x, &mut b);
        assert_eq!(f16_at(&b).to_f32(), -0.5);
        assert_eq!(b[2 + 3] & 0x0f, 0);
        // A block of zeros: d = 0 / −8 = −0 (as ggml's reference), every q = 8.
        Q4_0::quantize(&[0.0; 32], &mut b);
        assert_eq!(&b[..2], &[0, 0x80]);
        assert!(b[2..].iter().all(|&b| b == 0x88));
    }

    #[test]
    fn bad_scales_are_errors() {
        let mut b = [0u8; 18];
        assert!(Q4_0::check_block(&b).is_ok());
        b[..2].copy_from_slice(&0xfe00u16.to_le_bytes());
        let e = Q4_0::check_block(&b).unwrap_err();
        assert!(e.contains("q4_0") && e.contains("NaN"), "{e}");
    }
}
