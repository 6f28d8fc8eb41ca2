//! Which block format a matrix is stored in, as the loaders, the examples and the files name
//! it: [`QuantType`] (the crate's seven GGUF formats), and [`QuantFormat`], a format's
//! constructors behind plain function pointers so that a loader picks one at run time (from a
//! GGUF type, a safetensors header, a command-line flag) without naming the type.
//!
//! [`QuantType::format`] is the one place that maps a [`QuantType`] to its [`BlockFormat`];
//! everything else (the GGUF and safetensors readers, `Model::load_quantized`, `convert`) goes
//! through a [`QuantFormat`].

use super::{BlockFormat, Quantized};
use crate::ops::Matrix;
use crate::storage::SharedBytes;
use crate::weights::GgmlType;
use std::sync::Arc;

/// One of GGUF's block formats the crate runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
#[non_exhaustive]
pub enum QuantType {
    /// `q8_0`: blocks of 32 values, one f16 scale and 32 signed bytes (34 bytes).
    Q8_0,
    /// `q4_0`: blocks of 32 values, one f16 scale and 32 four-bit values (18 bytes).
    Q4_0,
    /// `q5_0`: blocks of 32 values, one f16 scale and 32 five-bit values (22 bytes).
    Q5_0,
    /// `q5_1`: blocks of 32 values, an f16 scale, an f16 minimum and 32 five-bit values (24
    /// bytes).
    Q5_1,
    /// `q4_k`: super-blocks of 256 values in eight sub-blocks with 6-bit scales and minimums,
    /// four-bit values (144 bytes).
    Q4_K,
    /// `q5_k`: as `q4_k` with a fifth bit per value (176 bytes).
    Q5_K,
    /// `q6_k`: super-blocks of 256 values in sixteen sub-blocks with 8-bit scales, six-bit
    /// values (210 bytes).
    Q6_K,
}

impl QuantType {
    /// Every type, in the order of this enum.
    pub const ALL: [QuantType; 7] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// The name as the crate writes it: `q8_0`, `q4_0`, `q5_0`, `q5_1`, `q4_k`, `q5_k`,
    /// `q6_k`.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q5_0 => "q5_0",
            QuantType::Q5_1 => "q5_1",
            QuantType::Q4_K => "q4_k",
            QuantType::Q5_K => "q5_k",
            QuantType::Q6_K => "q6_k",
        }
    }

    /// The GGML type of the same layout.
    pub fn ggml(self) -> GgmlType {
        match self {
            QuantType::Q8_0 => GgmlType::Q8_0,
            QuantType::Q4_0 => GgmlType::Q4_0,
            QuantType::Q5_0 => GgmlType::Q5_0,
            QuantType::Q5_1 => GgmlType::Q5_1,
            QuantType::Q4_K => GgmlType::Q4_K,
            QuantType::Q5_K => GgmlType::Q5_K,
            QuantType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// The type of a GGML type's layout, `None` for a GGML type the crate does not run.
    pub fn from_ggml(ty: GgmlType) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|q| q.ggml() == ty)
    }

    /// Values per block (32 or 256).
    pub fn block_values(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml().block_bytes()
    }

    /// The type a matrix is quantized to instead of this one when its rows do not split
    /// into this type's blocks, as llama.cpp's `llama_tensor_get_type` chooses: Q4_K → Q5_0,
    /// Q5_K → Q5_1, Q6_K → Q8_0 (32-value blocks of at least as many bits per weight); `None`
    /// for the 32-value types. A matrix that does not split into the fallback's blocks either
    /// is kept as stored.
    pub fn fallback(self) -> Option<QuantType> {
        match self {
            QuantType::Q4_K => Some(QuantType::Q5_0),
            QuantType::Q5_K => Some(QuantType::Q5_1),
            QuantType::Q6_K => Some(QuantType::Q8_0),
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q5_1 => None,
        }
    }

    /// The format's constructors (see [`QuantFormat`]), with the type's
    /// [`fallback`](QuantType::fallback).
    pub fn format(self) -> QuantFormat {
        let format = match self {
            QuantType::Q8_0 => QuantFormat::of::<super::Q8_0>(),
            QuantType::Q4_0 => QuantFormat::of::<super::Q4_0>(),
            QuantType::Q5_0 => QuantFormat::of::<super::Q5_0>(),
            QuantType::Q5_1 => QuantFormat::of::<super::Q5_1>(),
            QuantType::Q4_K => QuantFormat::of::<super::Q4K>(),
            QuantType::Q5_K => QuantFormat::of::<super::Q5K>(),
            QuantType::Q6_K => QuantFormat::of::<super::Q6K>(),
        };
        QuantFormat {
            fallback: self.fallback(),
            ..format
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QuantType {
    type Err = String;

    /// `q8_0`, `q4_0`, `q5_0`, `q5_1`, `q4_k`, `q5_k` or `q6_k`, in either case (GGML
    /// writes `Q8_0`).
    fn from_str(s: &str) -> Result<Self, String> {
        QuantType::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown block format `{s}`: expected q8_0, q4_0, q5_0, q5_1, q4_k, q5_k \
                     or q6_k"
                )
            })
    }
}

/// What a [`QuantFormat`] builds a matrix from.
#[derive(Clone, Copy, Debug)]
pub enum QuantSource<'a> {
    /// Blocks already in the format, row-major (used in place, e.g. from a memory map).
    Blocks(&'a SharedBytes),
    /// Values to quantize, `[rows, cols]` row-major.
    Values(&'a [f32]),
}

/// How a [`QuantFormat`] builds a matrix.
type Build = fn(QuantSource, usize, usize) -> Result<Arc<dyn Matrix>, String>;

/// A block format's constructors, chosen at run time: [`QuantFormat::of`] a [`BlockFormat`]
/// type, or [`QuantType::format`] (which also carries the type's fallback for matrices whose
/// rows do not split into its blocks, [`QuantFormat::for_width`]).
#[derive(Clone, Copy)]
pub struct QuantFormat {
    name: &'static str,
    values: usize,
    bytes: usize,
    build: Build,
    dequantize: fn(&[u8], &mut [f32]),
    encode: fn(&[f32], &mut [u8]),
    fallback: Option<QuantType>,
}

impl std::fmt::Debug for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantFormat")
            .field("name", &self.name)
            .field("values", &self.values)
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// [`QuantFormat::build`] for the format `F`.
fn build_as<F: BlockFormat>(
    from: QuantSource,
    rows: usize,
    cols: usize,
) -> Result<Arc<dyn Matrix>, String> {
    match from {
        QuantSource::Blocks(bytes) => Ok(Arc::new(Quantized::<F>::from_bytes(
            bytes.clone(),
            rows,
            cols,
        )?)),
        QuantSource::Values(values) => {
            if !cols.is_multiple_of(F::VALUES) || rows.checked_mul(cols) != Some(values.len()) {
                return Err(format!(
                    "{} values as {rows} rows of {cols}: not whole {}-value {} blocks",
                    values.len(),
                    F::VALUES,
                    F::NAME
                ));
            }
            Ok(Arc::new(Quantized::<F>::quantize(values, rows, cols)))
        }
    }
}

/// Every block of `bytes` decoded into `out` by `F`.
fn dequantize_as<F: BlockFormat>(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes
        .chunks_exact(F::BYTES)
        .zip(out.chunks_exact_mut(F::VALUES))
    {
        F::dequantize(b, o);
    }
}

/// Every block of `values` encoded into `out` by `F`.
fn encode_as<F: BlockFormat>(values: &[f32], out: &mut [u8]) {
    for (v, b) in values
        .chunks_exact(F::VALUES)
        .zip(out.chunks_exact_mut(F::BYTES))
    {
        F::quantize(v, b);
    }
}

impl QuantFormat {
    /// The constructors of `F`.
    pub fn of<F: BlockFormat>() -> QuantFormat {
        QuantFormat {
            name: F::NAME,
            values: F::VALUES,
            bytes: F::BYTES,
            build: build_as::<F>,
            dequantize: dequantize_as::<F>,
            encode: encode_as::<F>,
            fallback: None,
        }
    }

    /// The format's name (`q8_0`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Values per block.
    pub fn block_values(&self) -> usize {
        self.values
    }

    /// Bytes per block.
    pub fn block_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a matrix with rows of `cols` values splits into whole blocks.
    pub fn fits(&self, cols: usize) -> bool {
        cols.is_multiple_of(self.values)
    }

    /// The format a matrix with rows of `cols` values is quantized to: this one if the rows
    /// split into its blocks, else its fallback (see [`QuantType::fallback`]) if they split
    /// into that one's, else `None` (the matrix is kept as stored).
    pub fn for_width(&self, cols: usize) -> Option<QuantFormat> {
        if self.fits(cols) {
            return Some(*self);
        }
        self.fallback
            .map(QuantType::format)
            .filter(|f| f.fits(cols))
    }

    /// Bytes of a `[rows, cols]` matrix (`None` if `cols` does not split into whole blocks or
    /// the size overflows).
    pub fn matrix_bytes(&self, rows: usize, cols: usize) -> Option<usize> {
        if !self.fits(cols) {
            return None;
        }
        (cols / self.values)
            .checked_mul(self.bytes)?
            .checked_mul(rows)
    }

    /// The `[rows, cols]` matrix of `from`: blocks used in place (each checked), or values
    /// quantized.
    ///
    /// # Errors
    /// What is wrong: a width that is not whole blocks, a byte or value count that is not the
    /// matrix's, a bad block (with its row and index).
    pub fn build(
        &self,
        from: QuantSource,
        rows: usize,
        cols: usize,
    ) -> Result<Arc<dyn Matrix>, String> {
        (self.build)(from, rows, cols)
    }

    /// `values` (a whole number of blocks) quantized into the format's bytes, as
    /// [`QuantFormat::build`] quantizes them.
    ///
    /// # Errors
    /// If `values` is not a whole number of blocks.
    pub fn encode(&self, values: &[f32]) -> Result<Vec<u8>, String> {
        if !values.len().is_multiple_of(self.values) {
            return Err(format!(
                "{} values are not whole {}-value {} blocks",
                values.len(),
                self.values,
                self.name
            ));
        }
        let mut out = vec![0u8; values.len() / self.values * self.bytes];
        (self.encode)(values, &mut out);
        Ok(out)
    }

    /// The values of `bytes` (whole blocks), decoded.
    ///
    /// # Errors
    /// If `bytes` is not a whole number of blocks.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, String> {
        if !bytes.len().is_multiple_of(self.bytes) {
            return Err(format!(
                "{} bytes are not whole {}-byte {} blocks",
                bytes.len(),
                self.bytes,
                self.name
            ));
        }
        let mut out = vec![0f32; bytes.len() / self.bytes * self.values];
        (self.dequantize)(bytes, &mut out);
        Ok(out)
    }
}

/// The `[rows, cols]` matrix of `from` in the format `ty`: blocks used in place (each checked)
/// or values quantized (see [`QuantFormat::build`]).
///
/// # Errors
/// The errors of [`QuantFormat::build`].
pub fn quantized_matrix(
    ty: QuantType,
    from: QuantSource,
    rows: usize,
    cols: usize,
) -> Result<Arc<dyn Matrix>, String> {
    ty.format().build(from, rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for q in QuantType::ALL {
            assert_eq!(q.name().parse::<QuantType>().unwrap(), q);
            assert_eq!(q.ggml().name().parse::<QuantType>().unwrap(), q);
            assert_eq!(q.to_string(), q.name());
            assert_eq!(QuantType::from_ggml(q.ggml()), Some(q));
        }
        assert!("q4_1".parse::<QuantType>().is_err());
        assert_eq!(QuantType::from_ggml(GgmlType::Q4_1), None);
        assert_eq!(QuantType::Q6_K.block_bytes(), 210);
        assert_eq!(QuantType::Q5_0.block_bytes(), 22);
        assert_eq!(QuantType::Q5_1.block_bytes(), 24);
        assert!("Q5_1".parse::<QuantType>().is_ok());
        let e = "q3_k".parse::<QuantType>().unwrap_err();
        assert!(e.contains("q5_0, q5_1"), "{e}");
        assert_eq!(QuantType::Q8_0.block_values(), 32);
    }

    /// llama.cpp's fallbacks: a K type's 32-value stand-in where the rows are not whole
    /// 256-value blocks, nothing where they are not whole 32-value blocks either.
    #[test]
    fn fallbacks_cover_narrow_rows() {
        let name = |ty: QuantType, cols: usize| ty.format().for_width(cols).map(|f| f.name());
        for (ty, narrow) in [
            (QuantType::Q4_K, "q5_0"),
            (QuantType::Q5_K, "q5_1"),
            (QuantType::Q6_K, "q8_0"),
        ] {
            assert_eq!(name(ty, 512), Some(ty.name()));
            assert_eq!(name(ty, 672), Some(narrow));
            assert_eq!(name(ty, 2688), Some(narrow));
            assert_eq!(name(ty, 48), None);
            assert_eq!(ty.fallback().map(|f| f.name()), Some(narrow));
        }
        for ty in [
            QuantType::Q8_0,
            QuantType::Q4_0,
            QuantType::Q5_0,
            QuantType::Q5_1,
        ] {
            assert_eq!(ty.fallback(), None);
            assert_eq!(name(ty, 672), Some(ty.name()));
            assert_eq!(name(ty, 48), None);
        }
        // A format built from its block type alone has no fallback.
        assert!(QuantFormat::of::<super::super::Q4K>()
            .for_width(672)
            .is_none());
    }
}
