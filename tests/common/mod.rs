//! Shared test helpers: fixture discovery, expected-output files, comparisons.
#![allow(dead_code)]

pub mod golden;

use ndarray::{Array2, ArrayD, ArrayView2, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenshift::Model;

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture directory (one model and its official outputs each), sorted by name.
pub fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.safetensors").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures found");
    dirs
}

/// The fixture `name` (e.g. `v6-a`).
pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// A fixture's f32 model.
pub fn load_model(dir: &Path) -> Model {
    Model::load(dir.join("model.safetensors")).expect("fixture model loads")
}

/// The official package's outputs for one fixture.
pub struct Expected {
    pub tokens: Vec<u32>,
    pub tensors: HashMap<String, ArrayD<f32>>,
    pub metadata: HashMap<String, String>,
}

impl Expected {
    pub fn load(dir: &Path) -> Expected {
        let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        let mut tokens = Vec::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => {
                    let v = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    tensors.insert(
                        name,
                        ArrayD::from_shape_vec(IxDyn(view.shape()), v).unwrap(),
                    );
                }
                Dtype::I64 => {
                    assert_eq!(name, "tokens");
                    tokens = data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                        .collect();
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
        }
        Expected {
            tokens,
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        }
    }

    pub fn matrix(&self, name: &str) -> Array2<f32> {
        self.tensors[name].clone().into_dimensionality().unwrap()
    }

    /// The official final state of a mode (`seq` or `step`), in list order.
    pub fn state(&self, mode: &str) -> Vec<ArrayD<f32>> {
        (0..)
            .map_while(|i| self.tensors.get(&format!("state_{mode}.{i}")).cloned())
            .collect()
    }
}

/// max |a − b| over equal-shaped arrays.
pub fn max_abs_diff<D: ndarray::Dimension>(
    a: ndarray::ArrayView<f32, D>,
    b: ndarray::ArrayView<f32, D>,
) -> f32 {
    assert_eq!(a.dim(), b.dim(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// max |a − b| over two lists of equal-shaped arrays.
pub fn max_abs_diff_list(a: &[ArrayD<f32>], b: &[ArrayD<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "lists differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.shape(), y.shape(), "shapes differ");
            x.iter()
                .zip(y.iter())
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

/// Test inputs drawn from the crate's generator ([`tokenshift::sample::Rng`]).
pub struct Rng(tokenshift::sample::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(tokenshift::sample::Rng::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` token ids below `vocab`.
    pub fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n)
            .map(|_| (self.next_u64() % vocab as u64) as u32)
            .collect()
    }

    /// A `[rows, cols]` matrix of values uniform in `[-scale, scale)`.
    pub fn matrix(&mut self, rows: usize, cols: usize, scale: f32) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || self.uniform() * scale)
    }
}

/// One tensor of a safetensors file being written: name, dtype, shape, little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// `a` encoded as `dtype` (F32, F16 or BF16), little endian.
pub fn encode(a: &ArrayD<f32>, dtype: Dtype) -> Vec<u8> {
    a.iter()
        .flat_map(|&v| match dtype {
            Dtype::F32 => v.to_le_bytes().to_vec(),
            Dtype::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
            Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
            other => panic!("unsupported {other:?}"),
        })
        .collect()
}

/// Every tensor of a safetensors file, widened to f32.
pub fn read_tensors(bytes: Vec<u8>) -> Vec<(String, ArrayD<f32>)> {
    use tokenshift::weights::{SafeTensorsFile, TensorSource};
    let file = SafeTensorsFile::from_bytes(bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let a = file.tensor(&n).unwrap().to_f32();
            (n, a)
        })
        .collect()
}

/// A safetensors file holding `tensors`.
pub fn write_tensors(tensors: &[RawTensor]) -> Vec<u8> {
    let views = tensors.iter().map(|(n, dtype, shape, bytes)| {
        (
            n.as_str(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

/// The fixture model at `dir` as raw f32 tensors, to be edited and written back.
pub fn raw_model(dir: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    read_tensors(bytes)
        .into_iter()
        .map(|(n, a)| {
            let b = encode(&a, Dtype::F32);
            (n, Dtype::F32, a.shape().to_vec(), b)
        })
        .collect()
}

/// The fixture model at `dir` with every tensor stored as `dtype` (F16 or BF16).
pub fn model_bytes_as(dir: &Path, dtype: Dtype) -> Vec<u8> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let raw: Vec<RawTensor> = read_tensors(bytes)
        .into_iter()
        .map(|(n, a)| {
            let b = encode(&a, dtype);
            (n, dtype, a.shape().to_vec(), b)
        })
        .collect();
    write_tensors(&raw)
}

/// The fixture model at `dir` with every tensor rounded to `dtype` (F16 or BF16) and stored
/// back as f32: the same values a half-precision file holds.
pub fn model_bytes_rounded(dir: &Path, dtype: Dtype) -> Vec<u8> {
    let raw: Vec<RawTensor> = read_tensors(model_bytes_as(dir, dtype))
        .into_iter()
        .map(|(n, a)| {
            let b = encode(&a, Dtype::F32);
            (n, Dtype::F32, a.shape().to_vec(), b)
        })
        .collect();
    write_tensors(&raw)
}

/// sqrt(mean((a − b)²)) / sqrt(mean(b²)).
pub fn rms_rel_diff(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim(), "shapes differ");
    let num: f32 = a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}
