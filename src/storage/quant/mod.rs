//! Matrices stored in GGUF's quantized block formats, laid out bit for bit as GGUF stores them,
//! so a tensor of a GGUF file is used in place from the memory map.
//!
//! A [`BlockFormat`] says how one block of weights is stored, decoded and encoded, and how a
//! block row is dotted with an activation vector that was quantized once per product
//! ([`BlockFormat::Activation`], as llama.cpp does: 8-bit blocks, integer dot products).
//! [`Quantized`] holds rows of blocks and implements [`Matrix`] over any format.

mod lanes;
mod q4_0;
mod q5_0;
mod q5_1;
mod q8_0;
mod q8_act;
mod types;

pub use lanes::LanedQ8;
pub use q4_0::Q4_0;
pub use q5_0::Q5_0;
pub use q5_1::Q5_1;
pub use q8_0::Q8_0;
pub use q8_act::{Q8Act, Q8_ACT_BLOCK};
pub use types::{quantized_matrix, QuantFormat, QuantSource, QuantType};

use super::SharedBytes;
use crate::ops::{Cpu, Matrix, Prepared};
use std::ops::Range;

mod q4_k;
mod q5_k;
mod q6_k;
mod q8_k;

pub use q4_k::Q4K;
pub use q5_k::Q5K;
pub use q6_k::Q6K;
pub use q8_k::{Q8KActivation, Q8KBlock};

/// One of GGUF's block formats: `VALUES` weights stored in `BYTES` bytes.
pub trait BlockFormat: Send + Sync + std::fmt::Debug + 'static {
    /// The format's name as the crate writes it (`q8_0`, `q4_k`, ...).
    const NAME: &'static str;
    /// Weights per block.
    const VALUES: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// An activation vector quantized for this format's dot products (one per vector and
    /// product, reused for every row).
    type Activation: Default + Send + Sync + 'static;

    /// Decodes the block `block` (`BYTES` bytes) into `out` (`VALUES` values), as GGML's
    /// reference dequantization does.
    fn dequantize(block: &[u8], out: &mut [f32]);

    /// Encodes `values` (`VALUES` of them) into `block` (`BYTES` bytes), as GGML's reference
    /// quantization does.
    fn quantize(values: &[f32], block: &mut [u8]);

    /// `x` (a whole number of blocks long) quantized for [`BlockFormat::dot`] with `cpu`'s
    /// kernels.
    fn quantize_activation(cpu: Cpu, x: &[f32]) -> Self::Activation {
        let mut act = Self::Activation::default();
        Self::quantize_activation_into(cpu, x, &mut act);
        act
    }

    /// [`BlockFormat::quantize_activation`] into `act`, reusing its memory (a product's
    /// activation is made once per thread and product, into the same one each time).
    fn quantize_activation_into(cpu: Cpu, x: &[f32], act: &mut Self::Activation);

    /// The dot product of one row of blocks (`row.len()` a whole number of blocks) with a
    /// quantized activation of the same length, with `cpu`'s instructions.
    fn dot(cpu: Cpu, row: &[u8], x: &Self::Activation) -> f32;

    /// `out[i · stride] = dot(cpu, row i, x)` for each row of `rows` (consecutive rows of
    /// `row_bytes` bytes, the activation's length in blocks): a format may read the
    /// activation once for several rows. By default, one [`BlockFormat::dot`] a row.
    ///
    /// # Panics
    /// If `rows` is not whole rows, a row is not as long as the activation, or `out` is too
    /// short.
    #[track_caller]
    fn dot_rows(
        cpu: Cpu,
        rows: &[u8],
        row_bytes: usize,
        x: &Self::Activation,
        out: &mut [f32],
        stride: usize,
    ) {
        for_rows(rows, row_bytes, out, stride, |row| Self::dot(cpu, row, x));
    }

    /// `out[i · B + j] = dot(cpu, row i, xs[j])` for each row of `rows` (as
    /// [`BlockFormat::dot_rows`]) and each of the `B` activations `xs`: a format may unpack
    /// each block once for all of them. By default, [`BlockFormat::dot_rows`] for each.
    ///
    /// # Panics
    /// As [`BlockFormat::dot_rows`].
    #[track_caller]
    fn dot_rows_many(
        cpu: Cpu,
        rows: &[u8],
        row_bytes: usize,
        xs: &[Self::Activation],
        out: &mut [f32],
    ) {
        dot_rows_each::<Self>(cpu, rows, row_bytes, xs, out);
    }

    /// Checks one block read from a file (e.g. no NaN or infinite scale): `Err` says what is
    /// wrong.
    fn check_block(block: &[u8]) -> Result<(), String>;
}

/// A row-major `[out, in]` matrix in the block format `F`: each row is `in / F::VALUES` blocks
/// (`in` must be a multiple of `F::VALUES`), rows one after another, as GGUF stores a tensor.
#[derive(Clone, Debug)]
pub struct Quantized<F: BlockFormat> {
    bytes: SharedBytes,
    rows: usize,
    cols: usize,
    cpu: Cpu,
    format: std::marker::PhantomData<F>,
}

impl<F: BlockFormat> Quantized<F> {
    /// The `[rows, cols]` matrix whose blocks are `bytes` (used in place, e.g. a range of a
    /// memory-mapped GGUF file), every block checked by [`BlockFormat::check_block`].
    ///
    /// # Errors
    /// What is wrong: `cols` not a multiple of the block size, a byte count that is not
    /// exactly the matrix's blocks, or a bad block (with its row and index).
    pub fn from_bytes(bytes: SharedBytes, rows: usize, cols: usize) -> Result<Self, String> {
        if !cols.is_multiple_of(F::VALUES) {
            return Err(format!(
                "{} rows of {cols} values: not a whole number of {}-value {} blocks",
                rows,
                F::VALUES,
                F::NAME
            ));
        }
        let row_bytes = cols / F::VALUES * F::BYTES;
        let want = rows.checked_mul(row_bytes);
        if want != Some(bytes.len()) {
            return Err(format!(
                "{} bytes do not hold {rows} × {cols} values in {} blocks ({} bytes each)",
                bytes.len(),
                F::NAME,
                F::BYTES
            ));
        }
        for (i, block) in bytes.as_slice().chunks_exact(F::BYTES).enumerate() {
            F::check_block(block).map_err(|what| {
                let per_row = (cols / F::VALUES).max(1);
                format!("block {} of row {}: {what}", i % per_row, i / per_row)
            })?;
        }
        Ok(Quantized {
            bytes,
            rows,
            cols,
            cpu: Cpu::detect(),
            format: std::marker::PhantomData,
        })
    }

    /// `values` (`[rows, cols]`, row-major) quantized into `F`'s blocks.
    ///
    /// # Panics
    /// If `cols` is not a multiple of `F::VALUES` or `values` is not `rows · cols` long.
    #[track_caller]
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(F::VALUES),
            "Quantized::quantize: {} blocks",
            F::NAME
        );
        assert_eq!(values.len(), rows * cols, "Quantized::quantize: values");
        let mut bytes = vec![0u8; rows * cols / F::VALUES * F::BYTES];
        for (v, b) in values
            .chunks_exact(F::VALUES)
            .zip(bytes.chunks_exact_mut(F::BYTES))
        {
            F::quantize(v, b);
        }
        Quantized {
            bytes: SharedBytes::from_vec(bytes),
            rows,
            cols,
            cpu: Cpu::detect(),
            format: std::marker::PhantomData,
        }
    }

    /// The same matrix read by `cpu`'s kernels (a test runs every instruction set this way).
    pub fn with_cpu(mut self, cpu: Cpu) -> Self {
        self.cpu = cpu;
        self
    }

    /// The blocks, row-major.
    pub fn blocks(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Bytes per row.
    fn row_bytes(&self) -> usize {
        self.cols / F::VALUES * F::BYTES
    }

    /// The blocks of row `r`.
    #[track_caller]
    fn row(&self, r: usize) -> &[u8] {
        assert!(r < self.rows, "Quantized: row {r} of {}", self.rows);
        let n = self.row_bytes();
        &self.bytes.as_slice()[r * n..(r + 1) * n]
    }
}

impl<F: BlockFormat> Matrix for Quantized<F> {
    fn dim(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn type_name(&self) -> &'static str {
        F::NAME
    }

    fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    fn is_mapped(&self) -> bool {
        self.bytes.is_mapped()
    }

    #[track_caller]
    fn row_into(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "Quantized::row_into: output length");
        for (block, o) in self
            .row(r)
            .chunks_exact(F::BYTES)
            .zip(out.chunks_exact_mut(F::VALUES))
        {
            F::dequantize(block, o);
        }
    }

    #[track_caller]
    fn row_dots_prepared(
        &self,
        rows: Range<usize>,
        xs: &[&[f32]],
        prepared: &mut Prepared,
        out: &mut [f32],
    ) {
        let b = xs.len();
        assert!(
            rows.end <= self.rows,
            "Quantized::row_dots: rows {rows:?} of {}",
            self.rows
        );
        assert!(out.len() >= rows.len() * b, "Quantized::row_dots: output");
        for x in xs {
            assert_eq!(x.len(), self.cols, "Quantized::row_dots: vector length");
        }
        let acts = prepared.get_or_make(|acts: &mut Vec<F::Activation>| {
            acts.resize_with(xs.len(), Default::default);
            for (act, x) in acts.iter_mut().zip(xs) {
                F::quantize_activation_into(self.cpu, x, act);
            }
        });
        let n = self.row_bytes();
        let blocks = &self.bytes.as_slice()[rows.start * n..rows.end * n];
        F::dot_rows_many(self.cpu, blocks, n, acts, &mut out[..rows.len() * b]);
    }

    #[track_caller]
    fn pack_panel(&self, rows: Range<usize>, width: usize, dst: &mut [f32]) {
        assert!(rows.len() <= width, "Quantized::pack_panel: rows");
        assert_eq!(dst.len(), self.cols * width, "Quantized::pack_panel: panel");
        assert!(
            F::VALUES <= MAX_BLOCK_VALUES,
            "Quantized: {} blocks",
            F::NAME
        );
        // Each block decoded once into a buffer on the stack, then spread down its column.
        let mut values = [0.0f32; MAX_BLOCK_VALUES];
        let values = &mut values[..F::VALUES];
        for (i, r) in rows.clone().enumerate() {
            for (b, block) in self.row(r).chunks_exact(F::BYTES).enumerate() {
                F::dequantize(block, values);
                for (p, v) in values.iter().enumerate() {
                    dst[(b * F::VALUES + p) * width + i] = *v;
                }
            }
        }
        for i in rows.len()..width {
            for p in 0..self.cols {
                dst[p * width + i] = 0.0;
            }
        }
    }

    fn round_to_storage(&self, values: &mut [f32]) {
        let mut block = vec![0u8; F::BYTES];
        for part in values.chunks_exact_mut(F::VALUES) {
            F::quantize(part, &mut block);
            F::dequantize(&block, part);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The most values a block format holds (the K types' 256).
const MAX_BLOCK_VALUES: usize = 256;

/// `out[i · stride] = dot(row i)` for the rows of `rows` (`row_bytes` each; none if
/// `row_bytes` is 0).
///
/// # Panics
/// If `rows` is not whole rows or `out` is too short.
#[inline(always)]
#[track_caller]
pub(crate) fn for_rows(
    rows: &[u8],
    row_bytes: usize,
    out: &mut [f32],
    stride: usize,
    mut dot: impl FnMut(&[u8]) -> f32,
) {
    if row_bytes == 0 {
        return;
    }
    assert!(
        rows.len().is_multiple_of(row_bytes),
        "{} bytes are not whole rows of {row_bytes}",
        rows.len()
    );
    let count = rows.len() / row_bytes;
    assert!(
        count == 0 || out.len() > (count - 1) * stride,
        "dot_rows: output"
    );
    for (i, row) in rows.chunks_exact(row_bytes).enumerate() {
        out[i * stride] = dot(row);
    }
}

/// [`BlockFormat::dot_rows_many`] as one [`BlockFormat::dot_rows`] for each activation.
#[track_caller]
pub(crate) fn dot_rows_each<F: BlockFormat + ?Sized>(
    cpu: Cpu,
    rows: &[u8],
    row_bytes: usize,
    xs: &[F::Activation],
    out: &mut [f32],
) {
    if rows.is_empty() {
        return;
    }
    for (j, x) in xs.iter().enumerate() {
        F::dot_rows(cpu, rows, row_bytes, x, &mut out[j..], xs.len());
    }
}

/// [`for_rows`] four rows at a time through `four`, the rest through `one`.
///
/// # Panics
/// If `rows` is not whole rows or `out` is too short.
#[inline(always)]
#[track_caller]
pub(crate) fn for_rows_by_four(
    rows: &[u8],
    row_bytes: usize,
    out: &mut [f32],
    stride: usize,
    mut four: impl FnMut([&[u8]; 4]) -> [f32; 4],
    one: impl FnMut(&[u8]) -> f32,
) {
    if row_bytes == 0 {
        return;
    }
    let whole = rows.len() / (4 * row_bytes) * 4 * row_bytes;
    let (fours, rest) = rows.split_at(whole);
    let done = whole / row_bytes;
    assert!(
        done == 0 || out.len() > (done - 1) * stride,
        "dot_rows: output"
    );
    for (g, group) in fours.chunks_exact(4 * row_bytes).enumerate() {
        let dots = four(std::array::from_fn(|k| {
            &group[k * row_bytes..(k + 1) * row_bytes]
        }));
        for (k, d) in dots.into_iter().enumerate() {
            out[(4 * g + k) * stride] = d;
        }
    }
    if !rest.is_empty() {
        for_rows(rest, row_bytes, &mut out[done * stride..], stride, one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Linear;
    use ndarray::Array2;

    /// Prefill (more rows than the dot-product path takes) packs quantized rows into the GEMM's
    /// panels: the product equals that of the dequantized f32 matrix, bit for bit, for widths
    /// that leave a panel part-filled.
    #[test]
    fn prefill_panels_hold_the_dequantized_rows() {
        fn check<F: BlockFormat>() {
            let cols = 2 * F::VALUES;
            for rows in [1, 7, 37] {
                let values: Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
                    .collect();
                let q = Quantized::<F>::quantize(&values, rows, cols);
                let mut dequantized = Array2::zeros((rows, cols));
                for (r, mut row) in dequantized.rows_mut().into_iter().enumerate() {
                    q.row_into(r, row.as_slice_mut().unwrap());
                }
                let xs = Array2::from_shape_fn((40, cols), |(t, j)| {
                    ((t * 5 + j) % 13) as f32 / 6.0 - 1.0
                });
                let got = Linear::new(q).forward(xs.view());
                let want = Linear::from(dequantized).forward(xs.view());
                assert_eq!(got, want, "{} {rows} × {cols}", F::NAME);
            }
        }
        check::<Q8_0>();
        check::<Q4_0>();
        check::<Q5_0>();
        check::<Q5_1>();
        check::<Q4K>();
        check::<Q5K>();
        check::<Q6K>();
    }
}
