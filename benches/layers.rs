//! Single layers: the RWKV-5/6 WKV kernel, linear layers, and each time mix's two paths.

mod common;

use common::filled;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Array3};
use std::time::Duration;
use tokenshift::mixer::{wkv, SequenceMixer};
use tokenshift::ops::Linear;
use tokenshift::synthetic::{random_model, DType};
use tokenshift::{Config, Version};

fn settings<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    common::group(c, name, Duration::from_millis(300), Duration::from_secs(2))
}

fn wkv_kernel(c: &mut Criterion) {
    let (h, n) = (12, 64);
    let mut g = settings(c, "wkv/scan");
    for t in [1usize, 64, 256] {
        let (r, k, v) = (filled(t, h * n), filled(t, h * n), filled(t, h * n));
        let w = Array2::from_elem((t, h * n), 0.9f32);
        let u = filled(h, n);
        g.throughput(Throughput::Elements(t as u64));
        g.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, _| {
            let mut s = Array3::zeros((h, n, n));
            b.iter(|| wkv::scan(r.view(), k.view(), v.view(), w.view(), u.view(), &mut s))
        });
    }
    g.finish();
}

fn linear(c: &mut Criterion) {
    let (out, inp) = (768, 768);
    let w = filled(out, inp);
    let layers = [
        ("f32", Linear::from(w.clone())),
        ("f16", Linear::from(w.mapv(half::f16::from_f32))),
        ("bf16", Linear::from(w.mapv(half::bf16::from_f32))),
    ];
    let mut g = settings(c, "linear/768x768");
    for (name, layer) in &layers {
        // One token, a batch-sized block (dot-product kernels), a prompt (matrix products).
        for t in [1usize, 16, 512] {
            let xs = filled(t, inp);
            g.throughput(Throughput::Elements(t as u64));
            g.bench_with_input(BenchmarkId::new(*name, t), &t, |b, _| {
                b.iter(|| layer.forward(xs.view()))
            });
        }
    }
    g.finish();
}

fn time_mix(c: &mut Criterion) {
    for version in [Version::V4, Version::V5_2, Version::V6, Version::V7] {
        let config = Config::standard(version, 1, 768, 64, 256);
        let model = random_model(&config, DType::F32, 3).unwrap();
        let att = &model.blocks()[0].att;
        let mut g = settings(c, &format!("time_mix/v{version}"));
        let x = filled(1, 768);
        g.throughput(Throughput::Elements(1));
        g.bench_function("step", |b| {
            let mut state = att.init_state();
            b.iter(|| att.step(x.row(0), &mut state))
        });
        for t in [64usize, 256] {
            let xs = filled(t, 768);
            g.throughput(Throughput::Elements(t as u64));
            g.bench_with_input(BenchmarkId::new("forward", t), &t, |b, _| {
                let mut state = att.init_state();
                b.iter(|| att.forward(xs.view(), &mut state))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, wkv_kernel, linear, time_mix);
criterion_main!(benches);
