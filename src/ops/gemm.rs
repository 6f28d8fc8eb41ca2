//! Matrix-matrix products `ys = xs Wᵀ` on x86-64 CPUs with AVX-512F, or AVX2 with FMA and
//! F16C: the prefill path of [`Linear::forward`](super::Linear::forward) where the CPU has one
//! of them ([`Isa`]).
//!
//! Both operands are packed first, for the instruction set's micro-tile of `MR` rows × `NR`
//! columns ([`Isa::tile`]: 12 × 32 with AVX-512, 6 × 16 with AVX2): the rows of `xs` once per
//! product into groups of `MR` rows (`group[k][i]`, [`PackedRows`]), the weight (`[out, in]`,
//! f32, f16 or bf16) a block of output columns at a time, widened to f32 and transposed into
//! panels of `NR` columns (`panel[k][c]`), a square of register width at a time. Each
//! micro-tile keeps its `MR × NR` results in registers (24 of the 32 with AVX-512, 12 of the
//! 16 with AVX2) and, per step along `k`, loads two panel vectors and broadcasts one activation
//! per row, over [`DEPTH`] values of `k` before moving to the next tile. Where the CPU has two
//! 512-bit FMA units this is twice the arithmetic per cycle of the AVX2 kernel underneath
//! ndarray's product (docs/performance.md has the measurements). With
//! AVX2 each tile has panels and row groups of its own width, so a tile's operands are
//! contiguous: running the 12 × 32 layout in four 6 × 16 parts, each part read every other
//! cache line of its panel, half of L1's sets.

use super::matrix::Matrix;
use super::simd::{Cpu, Element};
use ndarray::{ArrayView2, ArrayViewMut2};
use std::ops::Range;

/// The most output columns of a micro-tile and a panel: the widest tile's.
const MAX_NR: usize = Isa::Avx512.tile().1;

/// Bytes of packed weights per block of output columns: the block stays in L2 while every row
/// of `xs` passes over it.
const BLOCK_BYTES: usize = 512 << 10;

/// Values of `K` per pass over a block.
const DEPTH: usize = 256;

/// How far ahead along each row a transpose asks for the weights: the rows of a strip are 8
/// or 16 streams at once, which the hardware prefetcher follows poorly (docs/performance.md).
const TRANSPOSE_PREFETCH_BYTES: usize = 512;

/// The vector instructions a product runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: a 12 × 32 micro-tile in 24 of the 32 registers.
    Avx512,
    /// AVX2, FMA and F16C: a 6 × 16 micro-tile in 12 of the 16 registers.
    Avx2,
}

impl Isa {
    /// Widest first.
    const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

    /// Whether `cpu` has these instructions.
    fn runs_on(self, cpu: Cpu) -> bool {
        match self {
            Isa::Avx512 => cpu.has_avx512(),
            Isa::Avx2 => cpu.has_avx2(),
        }
    }

    /// Whether this CPU has these instructions.
    fn runs_here(self) -> bool {
        self.runs_on(Cpu::detect())
    }

    /// Rows of `xs` and output columns per micro-tile, which are also the widths of the
    /// packed row groups and weight panels.
    const fn tile(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => (12, 32),
            Isa::Avx2 => (6, 16),
        }
    }

    /// The widest `cpu` has, if any.
    pub fn best(cpu: Cpu) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.runs_on(cpu))
    }
}

/// The rows of `xs` (`[T, K]`) packed for [`product`] with one instruction set's micro-tile
/// of `MR` rows ([`Isa::tile`]): `⌈T / MR⌉` groups of `K · MR` values, `group[p · MR + i]` =
/// row `i` of the group, element `p`, zero past the last row. Packed once and shared by every
/// block of output columns.
pub(crate) struct PackedRows {
    groups: Vec<Line>,
    isa: Isa,
    t: usize,
    k: usize,
}

impl PackedRows {
    /// `xs` packed for the widest instruction set of `cpu`, or `None` if [`product`] does not
    /// run on it.
    pub(crate) fn new(cpu: Cpu, xs: ArrayView2<f32>) -> Option<PackedRows> {
        Some(PackedRows::packed_with(Isa::best(cpu)?, xs))
    }

    /// Packs `xs` for `isa`'s micro-tile, with its transpose.
    fn packed_with(isa: Isa, xs: ArrayView2<f32>) -> PackedRows {
        let (t, k) = xs.dim();
        let (mr, _) = isa.tile();
        let xs = xs.as_standard_layout();
        let mut groups = Vec::new();
        let flat = resized(&mut groups, t.div_ceil(mr) * k * mr);
        if k > 0 {
            let values = xs.as_slice().expect("standard layout");
            for (rows, group) in values.chunks(k * mr).zip(flat.chunks_exact_mut(k * mr)) {
                f32::transpose_into(Some(isa), rows, k, mr, group);
            }
        }
        PackedRows { groups, isa, t, k }
    }
}

/// `ys[t, c] = Σ_k xs[t, k] · w[rows.start + c, k]`, overwriting `ys`: the product with the
/// block `rows` of the weight's rows, each packed into panels by [`Matrix::pack_panel`].
///
/// # Shapes
/// `w: [out, K]`, `rows` within `0..out` (`cols` of them), `xs: [T, K]` (packed),
/// `ys: [T, cols]`; `ys` must have unit column stride.
///
/// # Panics
/// If the shapes disagree or `ys`' columns are not contiguous. With the kernels of the
/// instruction set `xs` was packed for.
#[track_caller]
pub(crate) fn product(
    w: &dyn Matrix,
    rows: Range<usize>,
    xs: &PackedRows,
    mut ys: ArrayViewMut2<f32>,
) {
    let isa = xs.isa;
    let (mr, nr) = isa.tile();
    let (out, k) = w.dim();
    assert!(
        rows.start <= rows.end && rows.end <= out,
        "gemm::product: rows"
    );
    let cols = rows.len();
    let t = xs.t;
    assert_eq!(xs.k, k, "gemm::product: input width");
    assert_eq!(ys.dim(), (t, cols), "gemm::product: output shape");
    assert!(
        cols <= 1 || ys.strides()[1] == 1,
        "gemm::product: output columns contiguous"
    );
    assert!(isa.runs_here(), "gemm::product: the CPU lacks {isa:?}");
    if t == 0 || cols == 0 {
        return;
    }
    if k == 0 {
        ys.fill(0.0);
        return;
    }
    let ldy = ys.strides()[0];
    let y0 = ys.as_mut_ptr();
    let block_cols = (BLOCK_BYTES / (k * 4)).max(nr) / nr * nr;
    let mut panels = Vec::new();
    for c0 in (0..cols).step_by(block_cols) {
        let c1 = (c0 + block_cols).min(cols);
        let flat = resized(&mut panels, (c1 - c0).div_ceil(nr) * k * nr);
        for (i, panel) in flat.chunks_exact_mut(k * nr).enumerate() {
            let s0 = rows.start + c0 + i * nr;
            let s1 = (s0 + nr).min(rows.start + c1);
            w.pack_panel(s0..s1, nr, panel);
        }
        for k0 in (0..k).step_by(DEPTH) {
            let k1 = (k0 + DEPTH).min(k);
            for (g, t0) in (0..t).step_by(mr).enumerate() {
                let x = &lines(&xs.groups, g, k * mr)[k0 * mr..k1 * mr];
                for (p, s0) in (c0..c1).step_by(nr).enumerate() {
                    let tile = Tile {
                        x,
                        k: k1 - k0,
                        panel: &lines(&panels, p, k * nr)[k0 * nr..k1 * nr],
                        m: mr.min(t - t0),
                        width: nr.min(c1 - s0),
                        accumulate: k0 > 0,
                    };
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has `isa` (checked above). Element (t0, s0) and the
                    // `tile.m` rows × `tile.width` columns from it are inside `ys` (t0 + m ≤ T,
                    // s0 + width ≤ cols), whose columns are contiguous and rows `ldy` apart.
                    unsafe {
                        let y = y0.offset(t0 as isize * ldy + s0 as isize);
                        match isa {
                            Isa::Avx512 => avx512::tile(&tile, y, ldy),
                            Isa::Avx2 => avx2::tile(&tile, y, ldy),
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (&tile, y0, ldy);
                }
            }
        }
    }
}

/// A cache line of f32, so that every panel vector is one aligned load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// One micro-tile's inputs: `MR` packed rows of `x` (`x[p · MR + i]` = row `i`, element `p`),
/// one panel of `k · NR` weights (`panel[p · NR + c]` = weight row `c`, element `p`), and how
/// many of the product's rows and columns are wanted (`MR × NR` is the instruction set's
/// [`Isa::tile`]).
struct Tile<'a> {
    x: &'a [f32],
    k: usize,
    panel: &'a [f32],
    m: usize,
    width: usize,
    /// Whether the product is added to what `y` holds (a later part of `K`) or replaces it.
    accumulate: bool,
}

/// Values `[n · i, n · (i + 1))` of `lines` seen as f32.
fn lines(lines: &[Line], i: usize, n: usize) -> &[f32] {
    // SAFETY: `Line` is `repr(C)` around 16 f32 with no padding, so the lines are
    // `16 · len` contiguous, initialised f32.
    let flat =
        unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), lines.len() * 16) };
    &flat[n * i..n * (i + 1)]
}

/// `lines` grown (with zeros) to hold at least `n` values, seen as f32; values already there
/// stay as they were.
fn resized(lines: &mut Vec<Line>, n: usize) -> &mut [f32] {
    if lines.len() * 16 < n {
        lines.resize(n.div_ceil(16), Line([0.0; 16]));
    }
    // SAFETY: as in [`lines`].
    let flat = unsafe {
        std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), lines.len() * 16)
    };
    &mut flat[..n]
}

/// The packing of [`product`]'s operands, for each weight type.
pub(crate) trait Transpose: Element {
    /// `dst[p · width + i] = src[i · k + p]` widened to f32 for the `src.len() / k ≤ width`
    /// rows of `src` (`k` values each), and zero for the rows past them: `dst` holds
    /// `k · width` values, `width` is at most [`MAX_NR`]. With `isa`'s registers (the plain loop
    /// for `None`).
    ///
    /// # Panics
    /// If the shapes disagree, or the CPU lacks `isa`.
    fn transpose_into(isa: Option<Isa>, src: &[Self], k: usize, width: usize, dst: &mut [f32]);
}

macro_rules! pack_impl {
    ($t:ty, $transpose:ident) => {
        impl Transpose for $t {
            fn transpose_into(
                isa: Option<Isa>,
                src: &[$t],
                k: usize,
                width: usize,
                dst: &mut [f32],
            ) {
                let n = src.len() / k.max(1);
                assert!(
                    n <= width && width <= MAX_NR && src.len() == n * k && dst.len() == k * width,
                    "Transpose::transpose_into: shapes"
                );
                assert!(
                    isa.is_none_or(Isa::runs_here),
                    "Transpose::transpose_into: the CPU lacks {isa:?}"
                );
                // SAFETY: the CPU has `isa` (asserted above); shapes asserted above.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    match isa {
                        Some(Isa::Avx512) => return avx512::$transpose(src, k, width, dst),
                        Some(Isa::Avx2) => return avx2::$transpose(src, k, width, dst),
                        None => {}
                    }
                }
                transpose_plain(src, k, width, dst, 0);
            }
        }
    };
}

pack_impl!(f32, transpose_f32);
pack_impl!(half::f16, transpose_f16);
pack_impl!(half::bf16, transpose_bf16);

/// [`Transpose::transpose_into`] one value at a time, in the order of `dst`, for the elements
/// `from..k` of each row (the rest of `dst` is left as it is).
fn transpose_plain<T: Element>(src: &[T], k: usize, width: usize, dst: &mut [f32], from: usize) {
    let n = src.len() / k.max(1);
    for (p, out) in dst.chunks_exact_mut(width).enumerate().skip(from) {
        for (i, d) in out.iter_mut().enumerate() {
            *d = if i < n { src[i * k + p].widen() } else { 0.0 };
        }
    }
}

/// Defines each `$name`, [`Transpose::transpose_into`] for `$t` values, with the `$feature`
/// registers of `$lanes` lanes: `$load` widens `$lanes` values into one, `$transpose`
/// transposes `$lanes` of them, `$store` writes one under the mask `$mask` makes of a lane
/// count. The elements past the last whole group of `$lanes` in each row go through the plain
/// loop.
#[cfg(target_arch = "x86_64")]
macro_rules! transposes {
    (
        $feature:literal,
        $lanes:literal,
        $zero:ident,
        $transpose:ident,
        $mask:ident,
        $store:ident;
        $($name:ident: $t:ty = $load:ident),+ $(,)?
    ) => {$(
        /// # Safety
        /// The CPU must have the instructions of this module; the shapes must be as
        /// `Transpose::transpose_into` asserts them.
        #[target_feature(enable = $feature)]
        pub unsafe fn $name(src: &[$t], k: usize, width: usize, dst: &mut [f32]) {
            let n = src.len() / k.max(1);
            let whole = k - k % $lanes;
            let ahead = super::TRANSPOSE_PREFETCH_BYTES / std::mem::size_of::<$t>();
            for h in (0..width).step_by($lanes) {
                let mask = $mask((width - h).min($lanes));
                let rows = n.saturating_sub(h).min($lanes);
                for p0 in (0..whole).step_by($lanes) {
                    let mut r = [$zero(); $lanes];
                    for (i, v) in r.iter_mut().enumerate().take(rows) {
                        let at = (h + i) * k + p0;
                        // SAFETY: row h + i < n has k values, p0 + $lanes ≤ k. A prefetch
                        // never faults.
                        unsafe {
                            _mm_prefetch(
                                src.as_ptr().wrapping_add(at + ahead) as *const i8,
                                _MM_HINT_T0,
                            );
                            *v = $load(src.as_ptr().add(at));
                        }
                    }
                    for (p, v) in $transpose(r).into_iter().enumerate() {
                        // SAFETY: (p0 + p) · width + h + lanes ≤ k · width = dst.len(); the
                        // lanes past `width - h` are masked off.
                        unsafe { $store(dst.as_mut_ptr().add((p0 + p) * width + h), mask, v) };
                    }
                }
            }
            super::transpose_plain(src, k, width, dst, whole);
        }
    )+};
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Isa, Tile};
    use crate::ops::simd::avx512::{load_bf16, load_f16, load_f32};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    const MR: usize = Isa::Avx512.tile().0;
    const NR: usize = Isa::Avx512.tile().1;

    /// The mask of the first `lanes` (at most 16) lanes of a register.
    fn first_lanes(lanes: usize) -> __mmask16 {
        ((1u32 << lanes) - 1) as __mmask16
    }

    /// The transpose of a 16 × 16 block of f32 held as 16 rows.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved, then pairs of pairs: 128-bit lane l of `b[4j + c]` holds
        // column 4l + c of rows 4j..4j + 4.
        let mut a = [_mm512_setzero_ps(); 16];
        for j in 0..8 {
            a[2 * j] = _mm512_unpacklo_ps(r[2 * j], r[2 * j + 1]);
            a[2 * j + 1] = _mm512_unpackhi_ps(r[2 * j], r[2 * j + 1]);
        }
        let mut b = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            let (lo, hi) = (a[4 * j], a[4 * j + 1]);
            let (lo2, hi2) = (a[4 * j + 2], a[4 * j + 3]);
            b[4 * j] = _mm512_shuffle_ps::<0x44>(lo, lo2);
            b[4 * j + 1] = _mm512_shuffle_ps::<0xee>(lo, lo2);
            b[4 * j + 2] = _mm512_shuffle_ps::<0x44>(hi, hi2);
            b[4 * j + 3] = _mm512_shuffle_ps::<0xee>(hi, hi2);
        }
        // Then the 128-bit lanes: output row 4l + c is lane l of b[c], b[4 + c], b[8 + c] and
        // b[12 + c], in that order.
        let mut c = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (g0, g1, g2, g3) = (b[i], b[4 + i], b[8 + i], b[12 + i]);
            let lo01 = _mm512_shuffle_f32x4::<0x88>(g0, g1); // g0.l0 g0.l2 g1.l0 g1.l2
            let hi01 = _mm512_shuffle_f32x4::<0xdd>(g0, g1); // g0.l1 g0.l3 g1.l1 g1.l3
            let lo23 = _mm512_shuffle_f32x4::<0x88>(g2, g3);
            let hi23 = _mm512_shuffle_f32x4::<0xdd>(g2, g3);
            c[i] = _mm512_shuffle_f32x4::<0x88>(lo01, lo23); // lane 0 of every group
            c[8 + i] = _mm512_shuffle_f32x4::<0xdd>(lo01, lo23); // lane 2
            c[4 + i] = _mm512_shuffle_f32x4::<0x88>(hi01, hi23); // lane 1
            c[12 + i] = _mm512_shuffle_f32x4::<0xdd>(hi01, hi23); // lane 3
        }
        c
    }

    transposes!(
        "avx512f", 16, _mm512_setzero_ps, transpose16, first_lanes, _mm512_mask_storeu_ps;
        transpose_f32: f32 = load_f32,
        transpose_f16: f16 = load_f16,
        transpose_bf16: bf16 = load_bf16,
    );

    /// Writes the `tile.m × tile.width` product of one micro-tile to `y` (row stride `ldy`).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `tile.x` holds `tile.k · MR` values, `tile.panel`
    /// `tile.k · NR`, `tile.m ≤ MR`, `tile.width ≤ NR`, and `y` points to `tile.m` rows
    /// (stride `ldy`) of `tile.width` writable f32.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(tile: &Tile, y: *mut f32, ldy: isize) {
        let k = tile.k;
        assert!(tile.x.len() >= k * MR && tile.panel.len() >= k * NR);
        let a = tile.x.as_ptr();
        let b = tile.panel.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; MR];
        for p in 0..k {
            // SAFETY: `p < k`, so `b[p·NR .. p·NR + NR]` and `a[p·MR .. p·MR + MR]` are
            // inside the slices (asserted above).
            unsafe {
                let bv: [__m512; VECTORS] =
                    std::array::from_fn(|v| _mm512_loadu_ps(b.add(p * NR + 16 * v)));
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(p * MR + i));
                    for v in 0..VECTORS {
                        row[v] = _mm512_fmadd_ps(x, bv[v], row[v]);
                    }
                }
            }
        }
        // Lanes of each register that are columns of the product.
        let masks: [__mmask16; VECTORS] =
            std::array::from_fn(|v| first_lanes(tile.width.saturating_sub(16 * v).min(16)));
        for (i, row) in acc.iter().enumerate().take(tile.m) {
            for v in 0..VECTORS {
                if masks[v] == 0 {
                    break;
                }
                // SAFETY: row `i < m` of `y` has `width` writable values (caller) and column
                // 16·v is one of them (its mask is not empty); lanes past `width` are masked
                // off, so they are neither read nor written.
                unsafe {
                    let out = y.offset(i as isize * ldy).add(16 * v);
                    let mut sum = row[v];
                    if tile.accumulate {
                        sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(masks[v], out));
                    }
                    _mm512_mask_storeu_ps(out, masks[v], sum);
                }
            }
        }
    }

    /// Vector registers per row of a micro-tile.
    const VECTORS: usize = NR / 16;

    const _: () = assert!(
        NR.is_multiple_of(16) && (MR + 1) * VECTORS < 32,
        "accumulators, panel vectors and a broadcast fit"
    );
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Isa, Tile};
    use crate::ops::simd::avx2::{load_bf16, load_f16, load_f32};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    const MR: usize = Isa::Avx2.tile().0;
    const NR: usize = Isa::Avx2.tile().1;

    /// The mask of the first `lanes` (at most 8) lanes of a register.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn first_lanes(lanes: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// The transpose of an 8 × 8 block of f32 held as 8 rows.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // Pairs of rows interleaved, then pairs of pairs: `s[4h + c]` holds column c of rows
        // 4h..4h + 4 in its low 128-bit lane and column c + 4 in its high one.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        let mut s = [_mm256_setzero_ps(); 8];
        for h in 0..2 {
            let (lo, hi, lo2, hi2) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
            s[4 * h] = _mm256_shuffle_ps::<0x44>(lo, lo2);
            s[4 * h + 1] = _mm256_shuffle_ps::<0xee>(lo, lo2);
            s[4 * h + 2] = _mm256_shuffle_ps::<0x44>(hi, hi2);
            s[4 * h + 3] = _mm256_shuffle_ps::<0xee>(hi, hi2);
        }
        std::array::from_fn(|c| {
            if c < 4 {
                _mm256_permute2f128_ps::<0x20>(s[c], s[4 + c])
            } else {
                _mm256_permute2f128_ps::<0x31>(s[c - 4], s[c])
            }
        })
    }

    transposes!(
        "avx2,fma,f16c", 8, _mm256_setzero_ps, transpose8, first_lanes, _mm256_maskstore_ps;
        transpose_f32: f32 = load_f32,
        transpose_f16: f16 = load_f16,
        transpose_bf16: bf16 = load_bf16,
    );

    /// Writes the `tile.m × tile.width` product of one micro-tile to `y` (row stride `ldy`).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `tile.x` holds `tile.k · MR` values, `tile.panel`
    /// `tile.k · NR`, `tile.m ≤ MR`, `tile.width ≤ NR`, and `y` points to `tile.m` rows
    /// (stride `ldy`) of `tile.width` writable f32.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(tile: &Tile, y: *mut f32, ldy: isize) {
        assert!(tile.x.len() >= tile.k * MR && tile.panel.len() >= tile.k * NR);
        let a = tile.x.as_ptr();
        let b = tile.panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..tile.k {
            // SAFETY: p < k: `b[p·NR .. p·NR + NR]` and `a[p·MR .. p·MR + MR]` are inside
            // the slices (asserted above).
            unsafe {
                let at = b.add(p * NR);
                let bv = [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))];
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(p * MR + i));
                    row[0] = _mm256_fmadd_ps(x, bv[0], row[0]);
                    row[1] = _mm256_fmadd_ps(x, bv[1], row[1]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate().take(tile.m) {
            for (v, &sum) in row.iter().enumerate() {
                let n = tile.width.saturating_sub(8 * v).min(8);
                if n == 0 {
                    break;
                }
                // A whole register takes plain loads and stores (masked ones are slow on AMD
                // cores); in a partial one the lanes past `width` are masked off, neither read
                // nor written.
                // SAFETY: row `i < m` of `y` has `width` writable values (caller), and columns
                // 8·v .. 8·v + n are among them.
                unsafe {
                    let out = y.offset(i as isize * ldy).add(8 * v);
                    let mut sum = sum;
                    let mask = first_lanes(n);
                    if tile.accumulate {
                        let before = if n == 8 {
                            _mm256_loadu_ps(out)
                        } else {
                            _mm256_maskload_ps(out, mask)
                        };
                        sum = _mm256_add_ps(sum, before);
                    }
                    if n == 8 {
                        _mm256_storeu_ps(out, sum);
                    } else {
                        _mm256_maskstore_ps(out, mask, sum);
                    }
                }
            }
        }
    }

    const _: () = assert!(NR == 16, "two 8-lane registers per row of the micro-tile");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Dense;
    use half::{bf16, f16};
    use ndarray::{s, Array2};

    /// The instruction sets this CPU has: each is tested.
    fn isas_here() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.runs_here())
    }

    fn check<T: Element + Transpose + crate::ops::kernels::Dot>(from: fn(f32) -> T) {
        for isa in isas_here() {
            check_with(isa, from);
        }
    }

    fn check_with<T: Element + Transpose + crate::ops::kernels::Dot>(isa: Isa, from: fn(f32) -> T) {
        for (t, cols, k) in [
            (1, 1, 1),
            (5, 17, 3),
            (12, 32, 64),
            (13, 33, 70),
            (25, 70, 257),
            (40, 300, 1000),
        ] {
            let w = Array2::from_shape_fn((cols, k), |(i, j)| {
                from(((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0)
            });
            let xs = Array2::from_shape_fn((t, k), |(i, j)| ((i * 5 + j) % 13) as f32 / 6.0 - 1.0);
            // A strided output: the product lands in the middle columns of a wider array.
            let mut wide = Array2::from_elem((t, cols + 5), 7.0f32);
            let matrix = Dense::new(w.clone());
            product(
                &matrix,
                0..cols,
                &PackedRows::packed_with(isa, xs.view()),
                wide.slice_mut(s![.., 2..2 + cols]),
            );
            for ti in 0..t {
                for c in 0..cols {
                    let r: f64 = (0..k)
                        .map(|p| w[(c, p)].widen() as f64 * xs[(ti, p)] as f64)
                        .sum();
                    let y = wide[(ti, 2 + c)] as f64;
                    assert!(
                        (y - r).abs() <= 1e-4 * (1.0 + r.abs()),
                        "{isa:?} {t}x{cols}x{k} at ({ti}, {c}): {y} vs {r}"
                    );
                }
                for c in [0, 1, cols + 2, cols + 3, cols + 4] {
                    assert_eq!(
                        wide[(ti, c)],
                        7.0,
                        "{isa:?} {t}x{cols}x{k}: column {c} outside the block untouched"
                    );
                }
            }
        }
    }

    fn check_transpose<T: Transpose>(from: fn(f32) -> T) {
        for (n, k, width) in [
            (1, 1, 12),
            (12, 16, 12),
            (5, 37, 12),
            (32, 48, 32),
            (17, 70, 32),
            (3, 15, 32),
            (9, 24, 12),
            (6, 20, 6),
            (4, 9, 6),
            (16, 40, 16),
            (3, 17, 16),
        ] {
            let src: Vec<T> = (0..n * k)
                .map(|i| from(((i * 7) % 23) as f32 - 11.0))
                .collect();
            let mut plain = vec![f32::NAN; k * width];
            transpose_plain(&src, k, width, &mut plain, 0);
            for isa in isas_here() {
                let mut fast = vec![f32::NAN; k * width];
                T::transpose_into(Some(isa), &src, k, width, &mut fast);
                assert_eq!(fast, plain, "{isa:?}: {n} rows of {k} into width {width}");
            }
            assert_eq!(
                plain[(k - 1) * width + n - 1],
                src[n * k - 1].widen(),
                "last value"
            );
        }
    }

    #[test]
    fn transposes_match_the_plain_loop() {
        check_transpose::<f32>(|v| v);
        check_transpose(f16::from_f32);
        check_transpose(bf16::from_f32);
    }

    #[test]
    fn f32_product_matches_a_plain_sum() {
        check::<f32>(|v| v);
    }

    #[test]
    fn f16_product_matches_a_plain_sum() {
        check(f16::from_f32);
    }

    #[test]
    fn bf16_product_matches_a_plain_sum() {
        check(bf16::from_f32);
    }
}
