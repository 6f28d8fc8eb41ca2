//! Whole-model paths: one-token step, a prompt of T tokens at once, and B sessions advanced
//! by one token each.
//!
//! Shape: RWKV-6, 6 layers, 512 wide, head size 64, vocab 16384 (random weights), f32 and f16.
//!
//! `decode_executors`: one-token decode of the 0.1B shape (f16) through each [`Executor`], on
//! an idle machine and with another thread keeping one core busy.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokenshift::synthetic::{random_model, DType};
use tokenshift::{Config, Executor, Logits, Version};

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

/// A thread that keeps one core busy until dropped.
struct BusyCore(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl BusyCore {
    fn start() -> BusyCore {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut x = 0u64;
            while !flag.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        BusyCore(stop, Some(handle))
    }
}

impl Drop for BusyCore {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

fn decode_executors(c: &mut Criterion) {
    let config = Config::standard(Version::V6, 12, 768, 64, 65536);
    let mut model = random_model(&config, DType::F16, 7).unwrap();
    for busy in [false, true] {
        let _busy = busy.then(BusyCore::start);
        let load = if busy { "busy core" } else { "idle" };
        let mut group = c.benchmark_group(format!("decode_executors/0.1b-f16/{load}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(1));
        for executor in [
            Executor::Team,
            Executor::ForkJoin,
            Executor::Serial,
            Executor::Auto,
        ] {
            model.set_executor(executor);
            let model = &model;
            group.bench_function(format!("{executor:?}"), |b| {
                let mut state = model.init_state();
                let mut logits = ndarray::Array1::zeros(model.config().vocab);
                b.iter(|| model.step_into(42, &mut state, logits.view_mut()).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, model_paths, decode_executors);
criterion_main!(benches);
