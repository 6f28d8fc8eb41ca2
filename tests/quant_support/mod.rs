//! Shared by the block-format tests: reproducible values without a dependency.

#![allow(dead_code)] // each test binary uses part of it

/// Reproducible test values from the crate's generator ([`tokenshift::sample::Rng`]).
pub struct Rng(tokenshift::sample::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(tokenshift::sample::Rng::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 0.87
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
