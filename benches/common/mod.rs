//! What the criterion benches share: group settings sized for a 2-core machine and filled inputs.
#![allow(dead_code)]

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use ndarray::Array2;
use std::time::Duration;

/// A benchmark group with 10 samples, `warm_up` then `measure` of measurement.
pub fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    warm_up: Duration,
    measure: Duration,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measure);
    g
}

/// A `[rows, cols]` matrix of values in [-0.5, 0.5), the same for every run.
pub fn filled(rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |(i, j)| {
        ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5
    })
}
