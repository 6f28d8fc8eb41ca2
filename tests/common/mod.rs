//! Shared test helpers: fixture discovery, expected-output files, comparisons.
#![allow(dead_code)]

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
pub fn max_abs_diff(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f32 {
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
