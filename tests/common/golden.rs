//! Golden fixtures of the mixer tests (`tests/fixtures/mixers/*.safetensors`, tensors named
//! `<case>.<tensor>`), the relative error they are compared with, and the check that a
//! constructor's error names the wrong argument.

use super::{fixtures_dir, read_tensors};
use ndarray::{Array1, Array2, Array3, ArrayD, Ix1, Ix2, Ix3};
use std::collections::HashMap;
use tokenshift::Error;

/// The tensors of one fixture file by name.
pub struct Golden(HashMap<String, ArrayD<f32>>);

impl Golden {
    /// `tests/fixtures/mixers/<file>`.
    pub fn load(file: &str) -> Golden {
        let path = fixtures_dir().join("mixers").join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Golden(read_tensors(bytes).into_iter().collect())
    }
    pub fn get(&self, name: &str) -> &ArrayD<f32> {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name}"))
    }
    pub fn opt(&self, name: &str) -> Option<ArrayD<f32>> {
        self.0.get(name).cloned()
    }
    pub fn m(&self, name: &str) -> Array2<f32> {
        self.get(name).clone().into_dimensionality::<Ix2>().unwrap()
    }
    pub fn v(&self, name: &str) -> Array1<f32> {
        self.get(name).clone().into_dimensionality::<Ix1>().unwrap()
    }
    pub fn t3(&self, name: &str) -> Array3<f32> {
        self.get(name).clone().into_dimensionality::<Ix3>().unwrap()
    }
    pub fn opt_v(&self, name: &str) -> Option<Array1<f32>> {
        self.opt(name)
            .map(|a| a.into_dimensionality::<Ix1>().unwrap())
    }
}

/// max |a − b| / max(1, max |b|).
pub fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// `err` is an [`Error::InputShape`] whose subject and message name `want`.
pub fn input_error_names(err: Error, want: &str) {
    assert!(
        matches!(&err, Error::InputShape { what, .. } if what.contains(want)),
        "expected an input error naming `{want}`, got {err}"
    );
    assert!(err.to_string().contains(want), "{err}");
}
