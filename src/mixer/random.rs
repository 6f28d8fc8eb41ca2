//! Seeded random parameters for the `random` constructors of the layers and of synthetic
//! checkpoints (tests, benches), drawn from the crate's one generator ([`crate::sample::Rng`]).

use crate::ops::Linear;
use ndarray::{Array1, Array2, ArrayD, IxDyn};

/// Uniform and normal draws of parameters from the crate's generator.
pub(crate) struct Rng(crate::sample::Rng);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(crate::sample::Rng::new(seed))
    }

    /// Uniform in `[0, 1)`, f64.
    pub(crate) fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit() as f32
    }

    /// Standard normal (Box–Muller), f64.
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `[rows, cols]` uniform in `[lo, hi)`.
    pub(crate) fn matrix(&mut self, rows: usize, cols: usize, lo: f32, hi: f32) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || self.uniform(lo, hi))
    }

    /// An array of `shape` uniform in `[lo, hi)`.
    pub(crate) fn array(&mut self, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || self.uniform(lo, hi))
    }

    /// `[n]` uniform in `[lo, hi)`.
    pub(crate) fn vector(&mut self, n: usize, lo: f32, hi: f32) -> Array1<f32> {
        Array1::from_shape_simple_fn(n, || self.uniform(lo, hi))
    }

    /// A projection `[out, in]` with the variance of N(0, 1/in).
    pub(crate) fn linear(&mut self, out: usize, inp: usize) -> Linear {
        let b = (3.0 / inp as f32).sqrt();
        Linear::from(self.matrix(out, inp, -b, b))
    }
}
