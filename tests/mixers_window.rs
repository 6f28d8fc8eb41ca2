//! Sliding-window attention with sinks: every path against torch's masked
//! `scaled_dot_product_attention` (a band, and sinks without rotation) and against a float64
//! recomputation over the StreamingLLM cache (sinks with rotary embeddings re-indexed by cache
//! slot), committed by tools/mixers/make_window_fixtures.py; the paths against each other with
//! the cache carried across calls; the constructor's errors.

mod common;

use common::*;
use ndarray::{s, Array2, ArrayD, Ix2, ShapeBuilder};
use std::collections::HashMap;
use tokenshift::mixer::window_attention::{WindowAttention, WindowOptions};
use tokenshift::mixer::{MultiPath, Path, SequenceMixer};
use tokenshift::Error;

fn golden() -> HashMap<String, ArrayD<f32>> {
    let bytes = std::fs::read(fixtures_dir().join("mixers/window.safetensors"))
        .expect("tests/fixtures/mixers/window.safetensors");
    read_tensors(bytes).into_iter().collect()
}

fn matrix(g: &HashMap<String, ArrayD<f32>>, name: &str) -> Array2<f32> {
    g[name].clone().into_dimensionality::<Ix2>().unwrap()
}

fn max_rel(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Every path (and chunk sizes that split the window and the sinks in every way) matches the
/// independent implementation, from a fresh cache and with the sequence split in two.
#[test]
fn every_path_matches_the_golden_outputs() {
    let g = golden();
    // (case, window, sinks, rotary)
    for (case, window, sinks, rope) in [
        ("band", 5, 0, true),
        ("sinks_plain", 4, 3, false),
        ("sinks_rope", 4, 2, true),
    ] {
        let w = ["w_q", "w_k", "w_v", "w_o"].map(|n| matrix(&g, &format!("{case}.{n}")));
        let options = WindowOptions {
            window,
            sinks,
            rope_base: rope.then_some(10000.0),
        };
        let m = WindowAttention::new(2, w, options).unwrap();
        let (x, want) = (
            matrix(&g, &format!("{case}.x")),
            matrix(&g, &format!("{case}.y")),
        );
        let mut paths = vec![Path::Recurrent, Path::Parallel];
        paths.extend([1, 2, 3, 4, 7, 64].map(Path::Chunkwise));
        for path in paths {
            let mut state = m.init_state();
            let got = m.forward_path(x.view(), &mut state, path);
            let err = max_rel(&got, &want);
            assert!(err < 1e-5, "{case} {path:?}: {err:e}");
            // Split anywhere, carrying the cache.
            for split in [1, 6, 11] {
                let mut state = m.init_state();
                let a = m.forward_path(x.slice(s![..split, ..]), &mut state, path);
                let b = m.forward_path(x.slice(s![split.., ..]), &mut state, path);
                let got = ndarray::concatenate![ndarray::Axis(0), a, b];
                assert!(max_rel(&got, &want) < 1e-5, "{case} {path:?} split {split}");
            }
        }
        let mut state = m.init_state();
        let steps: Vec<_> = x
            .rows()
            .into_iter()
            .map(|r| m.step(r, &mut state))
            .collect();
        let views: Vec<_> = steps.iter().map(|r| r.view()).collect();
        let steps = ndarray::stack(ndarray::Axis(0), &views).unwrap();
        assert!(max_rel(&steps, &want) < 1e-5, "{case} step");
        let mut fresh = m.init_state();
        assert_eq!(m.forward(x.view(), &mut fresh).dim(), want.dim());
        // The same cache, up to the rounding of a matrix-matrix against a matrix-vector product.
        assert_eq!(fresh.position, state.position);
        for (a, b) in [
            (&fresh.keys, &state.keys),
            (&fresh.values, &state.values),
            (&fresh.sink_keys, &state.sink_keys),
        ] {
            assert!(
                max_rel(a, b) < 1e-6,
                "{case}: forward and steps leave the same cache"
            );
        }
        println!(
            "window attention {case}: max relative error {:.2e}",
            max_rel(&steps, &want)
        );
    }
}

/// `step_batch` equals each sequence's own steps (up to rounding), with caches at different
/// fill levels.
#[test]
fn batched_steps_equal_single_steps() {
    let options = WindowOptions {
        window: 5,
        sinks: 2,
        rope_base: Some(10000.0),
    };
    let m = WindowAttention::random(24, 3, 8, options, 4).unwrap();
    let mut rng = Rng::new(3);
    let prefixes = [0usize, 3, 9];
    let mut states: Vec<_> = prefixes
        .iter()
        .map(|&n| {
            let mut st = m.init_state();
            m.forward(rng.matrix(n, 24, 1.0).view(), &mut st);
            st
        })
        .collect();
    let mut singles = states.clone();
    let xs = rng.matrix(3, 24, 1.0);
    let mut refs: Vec<_> = states.iter_mut().collect();
    let batch = m.step_batch(xs.view(), &mut refs);
    for (i, st) in singles.iter_mut().enumerate() {
        // The batch projects its rows in one matrix product: equal up to its rounding.
        let one = m.step(xs.row(i), st).insert_axis(ndarray::Axis(0));
        let got = batch.slice(s![i..i + 1, ..]).to_owned();
        assert!(max_rel(&got, &one) < 1e-6, "row {i}");
        assert_eq!(st.position, states[i].position);
        assert!(max_rel(&st.keys, &states[i].keys) < 1e-6, "row {i} cache");
    }
}

#[test]
fn bad_arguments_are_errors_naming_them() {
    let w = |r: usize, c: usize| Array2::<f32>::zeros((r, c));
    let ok = || [w(16, 12), w(16, 12), w(16, 12), w(12, 16)];
    let opts = |window, rope_base| WindowOptions {
        window,
        sinks: 1,
        rope_base,
    };
    assert!(WindowAttention::new(2, ok(), opts(4, Some(1e4))).is_ok());
    let named = |r: Result<WindowAttention, Error>, what: &str| match r {
        Err(Error::InputShape { what: w, .. }) => assert!(w.contains(what), "{w} vs {what}"),
        other => panic!("expected an error naming {what}, got {other:?}"),
    };
    named(WindowAttention::new(2, ok(), opts(0, None)), "window");
    named(WindowAttention::new(3, ok(), opts(4, None)), "heads");
    let odd = [w(14, 12), w(14, 12), w(14, 12), w(12, 14)];
    named(
        WindowAttention::new(2, odd, opts(4, Some(1e4))),
        "rope_base",
    );
    let bad_k = [w(16, 12), w(15, 12), w(16, 12), w(12, 16)];
    named(WindowAttention::new(2, bad_k, opts(4, None)), "W_k");
    let bad_o = [w(16, 12), w(16, 12), w(16, 12), w(16, 12)];
    named(WindowAttention::new(2, bad_o, opts(4, None)), "W_o");
    named(
        WindowAttention::random(12, 2, 8, opts(0, None), 1),
        "window",
    );
    // Column-major projections give the same layer.
    let mut rng = Rng::new(8);
    let ws = [(16, 12), (16, 12), (16, 12), (12, 16)].map(|(r, c)| rng.matrix(r, c, 0.3));
    let fortran = ws.clone().map(|a| {
        let mut f = Array2::zeros(a.dim().f());
        f.assign(&a);
        f
    });
    let a = WindowAttention::new(2, ws, opts(4, Some(1e4))).unwrap();
    let b = WindowAttention::new(2, fortran, opts(4, Some(1e4))).unwrap();
    let x = rng.matrix(7, 12, 1.0);
    let (mut sa, mut sb) = (a.init_state(), b.init_state());
    assert_eq!(a.forward(x.view(), &mut sa), b.forward(x.view(), &mut sb));
}
