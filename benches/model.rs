//! Whole-model paths: one-token step, a prompt of T tokens at once, and B sessions advanced
//! by one token each.
//!
//! Shape: RWKV-6, 6 layers, 512 wide, head size 64, vocab 16384 (random weights), f32 and f16.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tokenshift::synthetic::{random_model, DType};
use tokenshift::{Config, Logits, Version};

fn model_paths(c: &mut Criterion) {
    let config = Config::standard(Version::V6, 6, 512, 64, 16384);
    for dtype in [DType::F32, DType::F16] {
        let model = random_model(&config, dtype, 7).unwrap();
        let mut group = c.benchmark_group(format!("model/{dtype:?}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Elements(1));
        group.bench_function("step", |b| {
            let mut state = model.init_state();
            b.iter(|| model.step(42, &mut state).unwrap())
        });
        for t in [16usize, 64, 512] {
            let tokens: Vec<u32> = (0..t as u32).map(|i| (i * 7919) % 16384).collect();
            group.throughput(Throughput::Elements(t as u64));
            group.bench_with_input(BenchmarkId::new("forward", t), &tokens, |b, tokens| {
                b.iter(|| {
                    let mut state = model.init_state();
                    model.forward(tokens, &mut state, Logits::Last).unwrap()
                })
            });
        }
        for b in [1usize, 4, 16] {
            let tokens: Vec<u32> = (0..b as u32).map(|i| (i * 7919) % 16384).collect();
            group.throughput(Throughput::Elements(b as u64));
            group.bench_with_input(
                BenchmarkId::new("step_batch", b),
                &tokens,
                |bench, tokens| {
                    let mut states = vec![model.init_state(); tokens.len()];
                    bench.iter(|| model.step_batch(tokens, &mut states).unwrap())
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, model_paths);
criterion_main!(benches);
