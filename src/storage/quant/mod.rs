//! Matrices stored in GGUF's quantized block formats, laid out bit for bit as GGUF stores them,
//! so a tensor of a GGUF file is used in place from the memory map.
//!
//! A [`BlockFormat`] says how one block of weights is stored, decoded and encoded, and how a
//! block row is dotted with an activation vector that was quantized once per product
//! ([`BlockFormat::Activation`], as llama.cpp does: 8-bit blocks, integer dot products).
//! [`Quantized`] holds rows of blocks and implements [`Matrix`] over any format.

mod q4_0;
mod q5_0;
mod q5_1;
mod q8_0;
mod q8_act;
mod types;

pub use q4_0::Q4_0;
pub use q5_0::Q5_0;
pub use q5_1::Q5_1;
pub use q8_0::Q8_0;
pub use q8_act::{Q8Act, Q8_ACT_BLOCK};
pub use types::{quantized_matrix, QuantFormat, QuantSource, QuantType};

use super::SharedBytes;
use crate::ops::{Cpu, Matrix};
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
    type Activation: Send + Sync + 'static;

    /// Decodes the block `block` (`BYTES` bytes) into `out` (`VALUES` values), as GGML's
    /// reference dequantization does.
    fn dequantize(block: &[u8], out: &mut [f32]);

    /// Encodes `values` (`VALUES` of them) into `block` (`BYTES` bytes), as GGML's reference
    /// quantization does.
    fn quantize(values: &[f32], block: &mut [u8]);

    /// `x` (a whole number of blocks long) quantized for [`BlockFormat::dot`].
    fn quantize_activation(x: &[f32]) -> Self::Activation;

    /// The dot product of one row of blocks (`row.len()` a whole number of blocks) with a
    /// quantized activation of the same length, with `cpu`'s instructions.
    fn dot(cpu: Cpu, row: &[u8], x: &Self::Activation) -> f32;

    /// `out[i] = dot(cpu, rows[i], x)` for several rows (as many as `out` is long): a format
    /// may read the activation once for all of them. By default, one [`BlockFormat::dot`]
    /// a row.
    fn dot_rows(cpu: Cpu, rows: &[&[u8]], x: &Self::Activation, out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(rows) {
            *o = Self::dot(cpu, row, x);
        }
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
    fn row_dots(&self, rows: Range<usize>, xs: &[&[f32]], out: &mut [f32]) {
        let b = xs.len();
        assert!(out.len() >= rows.len() * b, "Quantized::row_dots: output");
        for x in xs {
            assert_eq!(x.len(), self.cols, "Quantized::row_dots: vector length");
        }
        with_activations::<F, _>(xs, |acts| {
            // Four rows at a time, each activation read once for the four.
            let mut dots = [0.0f32; ROWS_AT_ONCE];
            for start in rows.clone().step_by(ROWS_AT_ONCE) {
                let end = (start + ROWS_AT_ONCE).min(rows.end);
                let group: [&[u8]; ROWS_AT_ONCE] =
                    std::array::from_fn(|k| self.row((start + k).min(end - 1)));
                let dots = &mut dots[..end - start];
                for (j, act) in acts.iter().enumerate() {
                    F::dot_rows(self.cpu, &group[..dots.len()], act, dots);
                    for (k, d) in dots.iter().enumerate() {
                        out[(start - rows.start + k) * b + j] = *d;
                    }
                }
            }
        });
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

/// Rows [`Quantized::row_dots`] hands [`BlockFormat::dot_rows`] at once.
const ROWS_AT_ONCE: usize = 4;

/// Whether `a` and `b` hold the same bits (in runs of 32 compared without an early exit,
/// which the compiler vectorizes).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.chunks(32).zip(b.chunks(32)).all(|(a, b)| {
            a.iter()
                .zip(b)
                .fold(true, |same, (a, b)| same & (a.to_bits() == b.to_bits()))
        })
}

/// The format, vectors and activations (a `Vec<F::Activation>`) of this thread's latest
/// [`Quantized::row_dots`] call.
type Latest = Option<(std::any::TypeId, Vec<f32>, Box<dyn std::any::Any>)>;

thread_local! {
    static LATEST: std::cell::RefCell<Latest> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on `xs` quantized by `F`, reusing this thread's latest quantization when it was
/// of the same values for the same format: a product's rows are dotted in many
/// `row_dots` calls (one per task of a few rows) with the same vectors, and the vector is
/// then quantized once per thread and product instead of once per call.
fn with_activations<F: BlockFormat, R>(xs: &[&[f32]], f: impl FnOnce(&[F::Activation]) -> R) -> R {
    let quantize =
        || -> Vec<F::Activation> { xs.iter().map(|x| F::quantize_activation(x)).collect() };
    LATEST.with(|latest| {
        let Ok(mut latest) = latest.try_borrow_mut() else {
            return f(&quantize());
        };
        let same = match &*latest {
            Some((format, values, acts)) => {
                *format == std::any::TypeId::of::<F>()
                    && acts
                        .downcast_ref::<Vec<F::Activation>>()
                        .is_some_and(|acts| acts.len() == xs.len())
                    && values.len() == xs.iter().map(|x| x.len()).sum::<usize>()
                    && values
                        .chunks(xs.first().map_or(1, |x| x.len().max(1)))
                        .zip(xs)
                        .all(|(v, x)| same_bits(v, x))
            }
            None => false,
        };
        if !same {
            let values = xs.iter().flat_map(|x| x.iter().copied()).collect();
            *latest = Some((std::any::TypeId::of::<F>(), values, Box::new(quantize())));
        }
        let acts = latest
            .as_ref()
            .and_then(|(_, _, acts)| acts.downcast_ref::<Vec<F::Activation>>())
            .expect("stored above");
        f(acts)
    })
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
