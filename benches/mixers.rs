//! The mixer family: every mixer's recurrent step and its recurrent, parallel and chunkwise
//! sequence paths, plus the chunk-length sweep that picked RWKV-5/6's default chunk.
//!
//! `cargo bench --bench mixers` (all), `cargo bench --bench mixers -- wkv_chunk` (the sweep).
//! Sized for a 2-core machine: 10 samples, short measurement times.

mod common;

use common::filled;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array1;
use std::time::Duration;
use tokenshift::block::TimeMix;
use tokenshift::mixer::aft::{AftFull, AftLocal, AftSimple};
use tokenshift::mixer::gla::Gla;
use tokenshift::mixer::linear_attention::LinearAttention;
use tokenshift::mixer::outer_product::{self, Gate, Inputs, OuterState, ReadOut};
use tokenshift::mixer::retention::Retention;
use tokenshift::mixer::rwkv5::DEFAULT_CHUNK;
use tokenshift::mixer::short_conv::ShortConv;
use tokenshift::mixer::window_attention::{WindowAttention, WindowOptions};
use tokenshift::mixer::{MultiPath, Path};
use tokenshift::synthetic::{random_model, DType};
use tokenshift::{Config, Version};

fn settings<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    common::group(
        c,
        name,
        Duration::from_millis(200),
        Duration::from_millis(1200),
    )
}

/// RWKV-5/6's WKV kernel (12 heads of 64, the size of a 768-wide model) on every path and at
/// several chunk lengths, at T = 256 and 1024.
fn wkv_chunk(c: &mut Criterion) {
    let (h, n) = (12, 64);
    let u: Array1<f32> = filled(1, h * n).row(0).to_owned();
    for t in [256usize, 1024] {
        let (r, k, v) = (filled(t, h * n), filled(t, h * n), filled(t, h * n));
        let per_token = filled(t, h * n).mapv(|x| -(4.0 * x).exp());
        let constant: Array1<f32> = per_token.row(0).to_owned();
        for (name, gate) in [
            ("v5", Gate::Key(constant.view())),
            ("v6", Gate::KeyToken(per_token.view())),
        ] {
            let mut g = settings(c, &format!("wkv_chunk/{name}/T{t}"));
            g.throughput(Throughput::Elements(t as u64));
            let x = Inputs {
                gate,
                read_out: ReadOut::Bonus(u.view()),
                ..Inputs::new(r.view(), k.view(), v.view())
            };
            g.bench_function("recurrent", |b| {
                let mut s = OuterState::new(h, n, n, false);
                b.iter(|| outer_product::recurrent(&x, &mut s))
            });
            for chunk in [8usize, 16, 32, 64, 128] {
                g.bench_with_input(BenchmarkId::new("chunkwise", chunk), &chunk, |b, &ch| {
                    let mut s = OuterState::new(h, n, n, false);
                    b.iter(|| outer_product::chunkwise(&x, &mut s, ch))
                });
            }
            g.finish();
        }
    }
}

/// One group per mixer: the recurrent step, then recurrent / parallel / chunkwise at T = 64,
/// 256, 1024, and recurrent / chunkwise at 4096 when `long` (AFT-full is `O(T²)` on every path).
fn bench_mixer<M: MultiPath>(c: &mut Criterion, name: &str, m: &M, chunk: usize, long: bool) {
    let width = 256;
    let mut g = settings(c, &format!("mixer/{name}"));
    let x = filled(1, width);
    g.throughput(Throughput::Elements(1));
    g.bench_function("step", |b| {
        let mut st = m.init_state();
        b.iter(|| m.step(x.row(0), &mut st))
    });
    for t in [64usize, 256, 1024, 4096] {
        if t > 1024 && !long {
            continue;
        }
        let xs = filled(t, width);
        g.throughput(Throughput::Elements(t as u64));
        let mut paths = vec![
            ("recurrent", Path::Recurrent),
            ("chunkwise", Path::Chunkwise(chunk)),
        ];
        if t <= 1024 {
            paths.push(("parallel", Path::Parallel));
        }
        for (label, path) in paths {
            g.bench_with_input(BenchmarkId::new(label, t), &t, |b, _| {
                b.iter(|| {
                    let mut st = m.init_state();
                    m.forward_path(xs.view(), &mut st, path)
                })
            });
        }
    }
    g.finish();
}

/// Width 256 for every mixer; 4 heads of 64 (RetNet and GLA: values of 128).
fn mixers(c: &mut Criterion) {
    let w = 256;
    let la = LinearAttention::random(w, 4, 64, None, 1);
    bench_mixer(c, "linear_attention", &la, 64, true);
    let performer = LinearAttention::random(w, 4, 64, Some(64), 2);
    bench_mixer(c, "performer", &performer, 64, true);
    bench_mixer(
        c,
        "retention",
        &Retention::random(w, 4, 64, false, 3),
        64,
        true,
    );
    let xpos = Retention::random(w, 4, 64, true, 3);
    bench_mixer(c, "retention_xpos", &xpos, 64, true);
    bench_mixer(c, "gla", &Gla::random(w, 4, 64, 4), 16, true);
    for version in [Version::V4, Version::V5_2, Version::V6, Version::V7] {
        let config = Config::standard(version, 1, w, 64, 256);
        let model = random_model(&config, DType::F32, 3).unwrap();
        let name = format!("rwkv{version}");
        match &model.blocks()[0].att {
            TimeMix::V4(m) => bench_mixer(c, &name, m, 64, true),
            TimeMix::V5(m) => bench_mixer(c, &name, m, DEFAULT_CHUNK, true),
            TimeMix::V6(m) => bench_mixer(c, &name, m, DEFAULT_CHUNK, true),
            TimeMix::V7(m) => bench_mixer(c, &name, m, tokenshift::mixer::rwkv7::CHUNK, true),
        }
    }
    bench_mixer(c, "aft_simple", &AftSimple::random(w, 5), 64, true);
    bench_mixer(c, "aft_full", &AftFull::random(w, 1024, 6), 64, false);
    bench_mixer(c, "aft_local", &AftLocal::random(w, 4096, 16, 7), 64, true);
    bench_mixer(c, "short_conv_k4", &ShortConv::random(w, 4, 8), 64, true);
    let options = WindowOptions {
        window: 128,
        sinks: 4,
        rope_base: Some(10000.0),
    };
    let window = WindowAttention::random(w, 4, 64, options, 9).unwrap();
    bench_mixer(c, "window_attention_w128_s4", &window, 128, true);
}

criterion_group!(benches, wkv_chunk, mixers);
criterion_main!(benches);
