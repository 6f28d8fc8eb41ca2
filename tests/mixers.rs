//! Every RWKV mixer's sequence path equals its recurrent path, layer by layer, and the WKV
//! kernels equal plain f64 references, including at extreme decays and keys.

mod common;

use common::*;
use ndarray::{s, stack, Array1, Array2, Array3, ArrayView2, Axis};
use tokenshift::block::TimeMix;
use tokenshift::mixer::rwkv4::{wkv4_scan, Rwkv4State};
use tokenshift::mixer::{wkv, SequenceMixer};

const TOL: f32 = 1e-4;

fn fold_steps<M: SequenceMixer>(m: &M, xs: ArrayView2<f32>, state: &mut M::State) -> Array2<f32> {
    let rows: Vec<Array1<f32>> = xs.rows().into_iter().map(|x| m.step(x, state)).collect();
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    stack(Axis(0), &views).unwrap()
}

/// forward == folded steps (outputs and state) from a non-zero state, for several T, and
/// forward over a split sequence with the state carried == forward over the whole.
fn check_paths<M>(m: &M, c: usize, what: &str)
where
    M: SequenceMixer,
    M::State: PartialEq + std::fmt::Debug,
{
    let mut rng = Rng::new(42);
    let mut warm = m.init_state();
    m.forward(rng.matrix(5, c, 1.0).view(), &mut warm);
    let xs = rng.matrix(257, c, 1.0);
    for t in [1, 2, 7, 64, 257] {
        let xs = xs.slice(s![..t, ..]);
        let (mut a, mut b) = (warm.clone(), warm.clone());
        let seq = m.forward(xs, &mut a);
        let rec = fold_steps(m, xs, &mut b);
        let d = max_abs_diff(seq.view(), rec.view());
        assert!(d <= TOL, "{what} T={t}: outputs differ by {d}");
        let mut c1 = warm.clone();
        let whole = m.forward(xs, &mut c1);
        if t > 2 {
            let mut c2 = warm.clone();
            let first = m.forward(xs.slice(s![..t / 2, ..]), &mut c2);
            let second = m.forward(xs.slice(s![t / 2.., ..]), &mut c2);
            let joined = ndarray::concatenate(Axis(0), &[first.view(), second.view()]).unwrap();
            let d = max_abs_diff(joined.view(), whole.view());
            assert!(d <= TOL, "{what} T={t}: split differs by {d}");
        }
    }
    // T = 0 changes nothing.
    let mut s0 = warm.clone();
    let out = m.forward(xs.slice(s![..0, ..]), &mut s0);
    assert_eq!(out.dim(), (0, c));
    assert_eq!(s0, warm);
}

#[test]
fn every_layer_of_every_fixture_has_matching_paths() {
    for dir in fixtures() {
        let model = load_model(&dir);
        let c = model.config().n_embd;
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for (i, block) in model.blocks().iter().enumerate() {
            match &block.att {
                TimeMix::V4(m) => check_paths(m, c, &format!("{name} block {i} att")),
                TimeMix::V5(m) => check_paths(m, c, &format!("{name} block {i} att")),
                TimeMix::V6(m) => check_paths(m, c, &format!("{name} block {i} att")),
                TimeMix::V7(m) => check_paths(m, c, &format!("{name} block {i} att")),
            }
            check_paths(&block.ffn, c, &format!("{name} block {i} ffn"));
        }
    }
}

/// Plain f64 RWKV-5/6 recurrence: y_t = r_tᵀ(diag(u) k_t v_tᵀ + S), S ← diag(w_t) S + k_t v_tᵀ.
fn wkv_reference(
    r: &Array2<f32>,
    k: &Array2<f32>,
    v: &Array2<f32>,
    w: &Array2<f32>,
    u: &Array2<f32>,
    s: &mut Array3<f64>,
) -> Array2<f64> {
    let (h, n, _) = s.dim();
    let mut y = Array2::zeros(r.raw_dim());
    for t in 0..r.nrows() {
        for hh in 0..h {
            for j in 0..n {
                let mut acc = 0.0;
                for i in 0..n {
                    let c = hh * n + i;
                    let kv = k[[t, c]] as f64 * v[[t, hh * n + j]] as f64;
                    acc += r[[t, c]] as f64 * (u[[hh, i]] as f64 * kv + s[[hh, i, j]]);
                    s[[hh, i, j]] = w[[t, c]] as f64 * s[[hh, i, j]] + kv;
                }
                y[[t, hh * n + j]] = acc;
            }
        }
    }
    y
}

#[test]
fn wkv_kernel_matches_f64_reference_at_extreme_decays() {
    let (h, n, t) = (3, 8, 100);
    let mut rng = Rng::new(1);
    let (r, k, v) = (
        rng.matrix(t, h * n, 1.0),
        rng.matrix(t, h * n, 1.0),
        rng.matrix(t, h * n, 1.0),
    );
    let u = rng.matrix(h, n, 1.0);
    // Decays near 1 (slow), near 0 (fast), exactly 0 and exactly 1, mixed per channel and token.
    let choices = [1.0, 0.999_999, 0.9999, 0.5, 1e-6, 0.0];
    let w = Array2::from_shape_fn((t, h * n), |(i, j)| {
        choices[(i * 7 + j * 3) % choices.len()]
    });
    let mut s = Array3::from_shape_fn((h, n, n), |(a, b, c)| {
        ((a + 2 * b + 3 * c) % 5) as f32 - 2.0
    });
    let mut s64 = s.mapv(f64::from);
    let y = wkv::scan(r.view(), k.view(), v.view(), w.view(), u.view(), &mut s);
    let y64 = wkv_reference(&r, &k, &v, &w, &u, &mut s64);
    assert!(y.iter().all(|v| v.is_finite()));
    let scale = y64.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let d = y
        .iter()
        .zip(y64.iter())
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(d / scale < 1e-5, "relative error {}", d / scale);
    let ds = s
        .iter()
        .zip(s64.iter())
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(ds / scale < 1e-5, "state relative error {}", ds / scale);
}

/// RWKV-4 WKV in f64 straight from its definition (log-sum-exp over the whole past).
fn wkv4_reference(
    k: &Array2<f32>,
    v: &Array2<f32>,
    decay: &Array1<f32>,
    first: &Array1<f32>,
) -> Array2<f64> {
    let (t_len, c) = k.dim();
    Array2::from_shape_fn((t_len, c), |(t, ch)| {
        let w = decay[ch] as f64;
        let mut exps: Vec<(f64, f64)> = (0..t)
            .map(|i| {
                (
                    (t - 1 - i) as f64 * w + k[[i, ch]] as f64,
                    v[[i, ch]] as f64,
                )
            })
            .collect();
        exps.push((first[ch] as f64 + k[[t, ch]] as f64, v[[t, ch]] as f64));
        let m = exps.iter().map(|e| e.0).fold(f64::NEG_INFINITY, f64::max);
        let num: f64 = exps.iter().map(|(e, v)| (e - m).exp() * v).sum();
        let den: f64 = exps.iter().map(|(e, _)| (e - m).exp()).sum();
        num / den
    })
}

#[test]
fn wkv4_kernel_is_stable_for_extreme_keys_and_decays() {
    let (t, c) = (64, 6);
    let mut rng = Rng::new(2);
    // Keys up to ±60 (e^60 overflows f32 without the running maximum).
    let k = rng.matrix(t, c, 60.0);
    let v = rng.matrix(t, c, 1.0);
    let decay = Array1::from(vec![-1e-6, -1e-3, -0.5, -5.0, -50.0, -1e4]);
    let first = Array1::from(vec![-30.0, -1.0, 0.0, 0.5, 3.0, 30.0]);
    let mut state = Rwkv4State::new(c);
    let y = wkv4_scan(k.view(), v.view(), decay.view(), first.view(), &mut state);
    assert!(y.iter().all(|v| v.is_finite()), "no NaN or Inf");
    assert!(state
        .aa
        .iter()
        .chain(&state.bb)
        .chain(&state.pp)
        .all(|v| v.is_finite()));
    let reference = wkv4_reference(&k, &v, &decay, &first);
    let d = y
        .iter()
        .zip(reference.iter())
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-4, "max difference {d}");
}
