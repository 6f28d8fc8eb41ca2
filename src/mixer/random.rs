//! Seeded random parameters for the standalone mixers' `random` constructors (tests, benches).

use crate::ops::Linear;
use ndarray::{Array1, Array2};

/// splitmix64 with Box–Muller normals: small, seedable and ample for test weights.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, f64.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
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
