//! What the criterion benches share: group settings sized for a 2-core machine and filled inputs.
#![allow(dead_code)]

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use ndarray::Array2;
use std::time::{Duration, Instant};

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

/// Best wall time per token of `run` over `reps` calls on `t` tokens, µs (the directly timed
/// benches, whose slow paths are too long for criterion's samples).
pub fn per_token(t: usize, reps: usize, mut run: impl FnMut() -> usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        std::hint::black_box(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    best / t as f64 * 1e6
}

/// The layer filter of the directly timed benches: `cargo bench` passes `--bench`; any other
/// argument keeps the layers whose name contains it (none keeps all).
pub fn name_filter() -> impl Fn(&str) -> bool {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    move |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}

/// [`per_token`] of `xs.nrows()` calls of `step` from the initial state.
pub fn steps_per_token<M: tokenshift::mixer::SequenceMixer>(
    m: &M,
    xs: &Array2<f32>,
    reps: usize,
) -> f64 {
    per_token(xs.nrows(), reps, || {
        let mut st = m.init_state();
        xs.rows()
            .into_iter()
            .map(|x| m.step(x, &mut st).len())
            .sum()
    })
}
