//! The 512-bit integer kernels of the 32-value block formats on AVX-512 VNNI with VBMI, used
//! by [`Q4_0`](super::Q4_0), [`Q5_0`](super::Q5_0) and [`Q5_1`](super::Q5_1).
//! ([`Q8_0`](super::Q8_0) keeps its 256-bit kernels, which decode faster: docs/performance.md.)
//!
//! A group of blocks of one row is read with two loads, and VBMI's byte permutes gather its
//! weights into one or two 64-byte vectors and its f16 scales into one per 32-bit lane. The
//! activation is laid out once per product ([`Q8Lanes`]) to match: the same integers in the
//! order of the weight vectors, and per lane the block's scale and the correction for the
//! unsigned weight operand of `vpdpbusd` (`OFFSET` times the sum of the lane's activation
//! integers), which starts the lane's integer sum. A group then costs a few byte operations,
//! one or two `vpdpbusd`, two conversions, a multiply and a multiply-add per row: about half
//! the instructions of the 256-bit kernels, which pay a broadcast and a conversion per block.

use super::q8_act::{Q8Act, Q8_ACT_BLOCK};

/// Lanes of a 512-bit vector of i32.
const LANES: usize = 16;

/// How one format's groups of blocks map onto the 16 lanes of a 512-bit vector: weight vector
/// `v` of a group holds, block after block, the values `v · P .. (v + 1) · P` of each block
/// (`P = 64 / GROUP_BLOCKS`), so lane `l` belongs to block `l · GROUP_BLOCKS / 16`.
pub(crate) trait LaneLayout {
    /// Blocks per group.
    const GROUP_BLOCKS: usize;
    /// Weight vectors (64 bytes each) per group: `GROUP_BLOCKS · 32 / 64`.
    const VECTORS: usize = Self::GROUP_BLOCKS * Q8_ACT_BLOCK / 64;
    /// What the unsigned weight operand adds to each weight: the lanes' sums are corrected by
    /// `OFFSET · Σa` (−128 for `q + 128`, −8 for the nibbles `q` of weights `q − 8`).
    const OFFSET: i32;
    /// Whether each block also has a minimum `m` added to its weights (`d · q + m`): the
    /// activation then keeps, per lane, its block scale times the sum of the lane's integers.
    const MINS: bool = false;
}

/// A [`Q8Act`]'s integers laid out for the 512-bit kernels of the format `L`: per group of
/// `L::GROUP_BLOCKS` blocks, `L::VECTORS` vectors of 64 integers in the weight vectors' order,
/// then per lane its block's scale and correction. Blocks past the last whole group are not
/// laid out (the kernels take them from the [`Q8Act`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Q8Lanes {
    qs: Vec<i8>,
    corrections: Vec<i32>,
    scales: Vec<f32>,
    /// Per lane, for formats with minimums: its block's scale times the sum of its integers.
    sums: Vec<f32>,
}

impl Q8Lanes {
    /// `act` laid out for the format `L`.
    pub(crate) fn build<L: LaneLayout>(&mut self, act: &Q8Act) {
        let groups = act.scales().len() / L::GROUP_BLOCKS;
        let group_values = L::GROUP_BLOCKS * Q8_ACT_BLOCK;
        // Each vector holds, block after block, `part` values of each block.
        let part = 64 / L::GROUP_BLOCKS;
        self.qs.clear();
        self.corrections.clear();
        self.scales.clear();
        self.sums.clear();
        for (blocks, scales) in act
            .qs()
            .chunks_exact(group_values)
            .zip(act.scales().chunks_exact(L::GROUP_BLOCKS))
            .take(groups)
        {
            let at = self.qs.len();
            for v in 0..L::VECTORS {
                for block in blocks.chunks_exact(Q8_ACT_BLOCK) {
                    self.qs.extend_from_slice(&block[v * part..(v + 1) * part]);
                }
            }
            let laid = &self.qs[at..];
            let lane_sum = |lane: usize| -> i32 {
                (0..L::VECTORS)
                    .flat_map(|v| &laid[v * 64 + 4 * lane..v * 64 + 4 * lane + 4])
                    .map(|&q| i32::from(q))
                    .sum()
            };
            self.corrections
                .extend((0..LANES).map(|lane| L::OFFSET * lane_sum(lane)));
            let lanes_per_block = LANES / L::GROUP_BLOCKS;
            let scale = |lane: usize| scales[lane / lanes_per_block];
            self.scales.extend((0..LANES).map(scale));
            if L::MINS {
                self.sums
                    .extend((0..LANES).map(|lane| scale(lane) * lane_sum(lane) as f32));
            }
        }
    }

    /// Whole groups laid out.
    pub(crate) fn groups(&self) -> usize {
        self.scales.len() / LANES
    }
}

/// An activation vector of the 32-value formats: its 8-bit blocks, and (where the 512-bit
/// kernels run) the same laid out for them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LanedQ8 {
    /// The blocks.
    pub q8: Q8Act,
    /// The blocks' whole groups laid out for the 512-bit kernels; empty where they do not run.
    pub lanes: Q8Lanes,
}

impl LanedQ8 {
    /// `x` quantized to 8-bit blocks into this one (reusing its memory), laid out for the
    /// format `L` where `cpu` runs its 512-bit kernels.
    pub(crate) fn quantize_from<L: LaneLayout>(&mut self, cpu: crate::ops::Cpu, x: &[f32]) {
        self.q8.quantize_from(cpu, x);
        if cpu.has_avx512_vbmi() {
            self.lanes.build::<L>(&self.q8);
        } else {
            self.lanes = Q8Lanes::default();
        }
    }

    /// Values quantized.
    pub fn len(&self) -> usize {
        self.q8.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.q8.is_empty()
    }
}

/// The kernels, on AVX-512 F, BW, VL, VNNI and VBMI.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{LaneLayout, LanedQ8, Q8Lanes, LANES};
    use std::arch::x86_64::*;

    /// A group of blocks of one row as [`Unpack::unpack`] gives it.
    pub(crate) struct Unpacked {
        /// The weights as unsigned bytes, in `VECTORS` vectors.
        pub weights: [__m512i; 2],
        /// Each lane's block scale, f16.
        pub scales: __m256i,
        /// Each lane's block minimum, f16 (where the format has them).
        pub mins: __m256i,
    }

    /// One activation's group as the kernels read it.
    struct Activation {
        a: [__m512i; 2],
        corrections: __m512i,
        scales: __m512,
        sums: __m512,
    }

    /// A format's groups of blocks as the kernels read them.
    pub(crate) trait Unpack: LaneLayout {
        /// Bytes of a group: `GROUP_BLOCKS` blocks.
        const GROUP_BYTES: usize;

        /// The weights of the group `group` (`GROUP_BYTES` bytes) as unsigned bytes in
        /// `VECTORS` vectors (the others zero), each lane's f16 block scale, and (where
        /// `MINS`) each lane's f16 block minimum.
        ///
        /// # Safety
        /// The CPU must have AVX-512 F, BW, VL, VNNI and VBMI, and F16C.
        unsafe fn unpack(group: &[u8]) -> Unpacked;
    }

    /// How far ahead of the rows being read the kernels prefetch, at least: a whole number
    /// of the rows' span (the distance is measured: docs/performance.md).
    const PREFETCH_BYTES: usize = 3 << 10;

    /// `out[r][v]` = row `r`'s whole groups of blocks · activation `v`, for the `R` rows
    /// `rows` (consecutive in memory) and the `V` activations `lanes` laid out for them:
    /// each group of each row is unpacked once for all the activations.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VL, VNNI and VBMI, and F16C; each row holds
    /// every activation's `groups()` whole groups.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(crate) unsafe fn dots<L: Unpack, const R: usize, const V: usize>(
        rows: [&[u8]; R],
        lanes: [&Q8Lanes; V],
    ) -> [[f32; V]; R] {
        let groups = lanes[0].groups();
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        // The rows are consecutive in memory: the bytes as far ahead of them as they are long
        // (or a multiple of that) are read next, at `R` groups a step, prefetched a step at a
        // time. (The hardware prefetcher alone follows four rows read side by side poorly.)
        let span = R * rows[0].len();
        let ahead = span * PREFETCH_BYTES.div_ceil(span.max(1));
        let base = rows[0].as_ptr().wrapping_add(ahead);
        let step = R * L::GROUP_BYTES;
        for g in 0..groups {
            // A prefetch never faults, whatever the address.
            let mut line = (g * step).next_multiple_of(64);
            while line < (g + 1) * step {
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(line) as *const i8);
                line += 64;
            }
            // The group's activations, each loaded once (the loads are invariant in the loop
            // over the rows below).
            let acts: [Activation; V] = std::array::from_fn(|v| {
                let lanes = lanes[v];
                let qs = &lanes.qs[g * L::VECTORS * 64..(g + 1) * L::VECTORS * 64];
                let lane = g * LANES..(g + 1) * LANES;
                // SAFETY: 64 readable values at each pointer (sliced above).
                unsafe {
                    let a: [__m512i; 2] = std::array::from_fn(|k| {
                        if k < L::VECTORS {
                            _mm512_loadu_si512(qs[k * 64..].as_ptr() as *const __m512i)
                        } else {
                            _mm512_setzero_si512()
                        }
                    });
                    let corrections =
                        _mm512_loadu_si512(lanes.corrections[lane.clone()].as_ptr() as *const _);
                    let sums = if L::MINS {
                        _mm512_loadu_ps(lanes.sums[lane.clone()].as_ptr())
                    } else {
                        _mm512_setzero_ps()
                    };
                    let scales = _mm512_loadu_ps(lanes.scales[lane].as_ptr());
                    Activation {
                        a,
                        corrections,
                        scales,
                        sums,
                    }
                }
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = g * L::GROUP_BYTES;
                // SAFETY: the CPU has what `unpack` needs; the slice is one group.
                let w = unsafe { L::unpack(&rows[r][at..at + L::GROUP_BYTES]) };
                let dw = _mm512_cvtph_ps(w.scales);
                let mins = if L::MINS {
                    _mm512_cvtph_ps(w.mins)
                } else {
                    _mm512_setzero_ps()
                };
                for (x, acc) in acts.iter().zip(acc.iter_mut()) {
                    let mut sum = _mm512_dpbusd_epi32(x.corrections, w.weights[0], x.a[0]);
                    if L::VECTORS > 1 {
                        sum = _mm512_dpbusd_epi32(sum, w.weights[1], x.a[1]);
                    }
                    let d = _mm512_mul_ps(dw, x.scales);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, *acc);
                    if L::MINS {
                        *acc = _mm512_fmadd_ps(mins, x.sums, *acc);
                    }
                }
            }
        }
        acc.map(|a| a.map(|a| _mm512_reduce_add_ps(a)))
    }

    /// `N` bytes at `p` as the low bytes of a vector (the rest zero).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) fn load_tail(p: &[u8]) -> __m512i {
        let mask = (1u64 << p.len()) - 1;
        // SAFETY: the mask reads only the `p.len()` (< 64) bytes of `p`; masked-off bytes are
        // neither read nor fault.
        unsafe { _mm512_maskz_loadu_epi8(mask, p.as_ptr() as *const i8) }
    }

    /// `R` rows' dot products with `x`: the whole groups through [`dots`], the blocks after
    /// them (from block `first` of a row) through `rest(row, first)`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VL, VNNI and VBMI, AVX2, FMA and F16C; each row is
    /// as long as the activation.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(crate) unsafe fn dots_and_rest<L: Unpack, const R: usize>(
        rows: [&[u8]; R],
        x: &LanedQ8,
        rest: impl Fn(&[u8], usize) -> f32,
    ) -> [f32; R] {
        // SAFETY: as this function's.
        let dots = unsafe { dots::<L, R, 1>(rows, [&x.lanes]) };
        let done = x.lanes.groups() * L::GROUP_BLOCKS;
        let whole = done == x.q8.scales().len();
        std::array::from_fn(|r| dots[r][0] + if whole { 0.0 } else { rest(rows[r], done) })
    }

    /// `BlockFormat::dot_rows` through [`dots_and_rest`], four rows at a time.
    ///
    /// # Safety
    /// As [`dots_and_rest`]'s, for every row of `rows`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(crate) unsafe fn rows<L: Unpack>(
        rows: &[u8],
        row_bytes: usize,
        x: &LanedQ8,
        out: &mut [f32],
        stride: usize,
        rest: impl Fn(&[u8], usize) -> f32 + Copy,
    ) {
        // SAFETY (both): as this function's.
        super::super::for_rows_by_four(
            rows,
            row_bytes,
            out,
            stride,
            |four| unsafe { dots_and_rest::<L, 4>(four, x, rest) },
            |row| unsafe { dots_and_rest::<L, 1>([row], x, rest) }[0],
        )
    }

    /// A group of blocks of 4-bit values read as two vectors (its first 64 bytes, then the
    /// rest of its `group.len()` ≤ 128 bytes), and its 64 bytes of 4-bit values, gathered by
    /// the permute indices `nibbles`, split into the low nibbles (weights 0..16 of each
    /// block) and the high ones (weights 16..32).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(crate) fn split_nibbles(
        group: &[u8],
        nibbles: &'static [u8; 64],
    ) -> ([__m512i; 2], [__m512i; 2]) {
        let head = load64(group[..64].try_into().expect("64 bytes"));
        let tail = load_tail(&group[64..]);
        let packed = _mm512_permutex2var_epi8(head, indices(nibbles), tail);
        let low = _mm512_set1_epi8(0x0f);
        let lo = _mm512_and_si512(packed, low);
        let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
        ([head, tail], [lo, hi])
    }

    /// 64 bytes at `p` as a vector.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn load64(p: &[u8; 64]) -> __m512i {
        // SAFETY: 64 readable bytes; loadu has no alignment need.
        unsafe { _mm512_loadu_si512(p.as_ptr() as *const __m512i) }
    }

    /// The byte-permute indices that gather a group's f16 scales (block `k`'s at byte
    /// `k · block_bytes + at`) into one per lane, `lanes_per_block` lanes a block.
    pub(crate) const fn scale_indices(
        block_bytes: usize,
        at: usize,
        lanes_per_block: usize,
    ) -> [u8; 64] {
        let mut idx = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            let lane = (i / 2) % LANES;
            idx[i] = (lane / lanes_per_block * block_bytes + at + i % 2) as u8;
            i += 1;
        }
        idx
    }

    /// The byte-permute indices that gather the weights of a group of blocks (`block_bytes`
    /// each, the weight bytes after the first `skip`) from two vectors: byte `i` takes weight
    /// byte `i % per_block` of block `i / per_block`.
    pub(crate) const fn weight_indices(
        block_bytes: usize,
        skip: usize,
        per_block: usize,
    ) -> [u8; 64] {
        let mut idx = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            idx[i] = ((i / per_block) * block_bytes + skip + i % per_block) as u8;
            i += 1;
        }
        idx
    }

    /// 64 constant bytes as a vector.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn indices(idx: &'static [u8; 64]) -> __m512i {
        load64(idx)
    }
}
