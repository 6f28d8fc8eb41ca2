//! RWKV-7: the WKV kernel's chunkwise form equals its recurrence and both equal a plain f64
//! recurrence (ragged chunks, a non-zero start state, extreme decays, long sequences); the value
//! residual is carried through the model; official state-tuning files load as initial states.
//!
//! `wkv7_speed` (ignored; `cargo test --release --test rwkv7 -- --ignored --nocapture`) times
//! both sequence paths on a released model's head shape.

mod common;

use common::*;
use ndarray::{s, Array2, Array3, ArrayView2, Axis};
use safetensors::tensor::Dtype;
use tokenshift::block::{TimeMix, TimeMixState};
use tokenshift::mixer::{wkv7, Path, SequenceMixer};
use tokenshift::{Error, Logits, Model, State};

/// Inputs of the kernel as RWKV-7 makes them, `t` tokens of `h` heads of size `n`:
/// `w = exp(−0.606531 σ(z))` over the whole trained range, `a = −κ̂`, `b = κ̂ ⊙ iclr` with `κ̂`
/// unit-norm per head and `iclr ∈ (0, 1)`.
struct Inputs {
    r: Array2<f32>,
    w: Array2<f32>,
    k: Array2<f32>,
    v: Array2<f32>,
    a: Array2<f32>,
    b: Array2<f32>,
}

impl Inputs {
    fn new(rng: &mut Rng, h: usize, n: usize, t: usize) -> Inputs {
        let c = h * n;
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let w = rng
            .matrix(t, c, 5.0)
            .mapv(|z| (-0.606_531 * sigmoid(z - 2.0)).exp());
        let mut kappa = rng.matrix(t, c, 1.0);
        for mut row in kappa.rows_mut() {
            for mut head in row.exact_chunks_mut(n) {
                let norm = head.dot(&head).sqrt().max(1e-12);
                head /= norm;
            }
        }
        let iclr = rng.matrix(t, c, 0.5).mapv(|x| x + 0.5);
        Inputs {
            r: rng.matrix(t, c, 1.0),
            w,
            k: rng.matrix(t, c, 1.0),
            v: rng.matrix(t, c, 1.0),
            a: -&kappa,
            b: &kappa * &iclr,
        }
    }

    /// `[r, w, k, v, a, b]`, rows `range`.
    fn rows(&self, range: std::ops::Range<usize>) -> [ArrayView2<'_, f32>; 6] {
        [&self.r, &self.w, &self.k, &self.v, &self.a, &self.b]
            .map(|x| x.slice(s![range.clone(), ..]))
    }
}

/// The recurrence in f64, straight from its definition:
/// `S[i][j] ← S[i][j]·w[j] + (Σ_m S[i][m]·a[m])·b[j] + v[i]·k[j]`, `y[i] = Σ_j S[i][j]·r[j]`.
fn reference(x: &Inputs, s: &mut Array3<f64>) -> Array2<f64> {
    let (h, n, _) = s.dim();
    let at = |m: &Array2<f32>, t: usize, c: usize| m[[t, c]] as f64;
    let mut y = Array2::zeros(x.r.raw_dim());
    for t in 0..x.r.nrows() {
        for hh in 0..h {
            let c = |j: usize| hh * n + j;
            for i in 0..n {
                let sa: f64 = (0..n).map(|j| s[[hh, i, j]] * at(&x.a, t, c(j))).sum();
                let mut yi = 0.0;
                for j in 0..n {
                    let sij = &mut s[[hh, i, j]];
                    *sij = *sij * at(&x.w, t, c(j))
                        + sa * at(&x.b, t, c(j))
                        + at(&x.v, t, c(i)) * at(&x.k, t, c(j));
                    yi += *sij * at(&x.r, t, c(j));
                }
                y[[t, c(i)]] = yi;
            }
        }
    }
    y
}

/// max |a − b| / max(1, max |b|).
fn rel_diff<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f64> + Clone,
) -> f64 {
    let scale = b.clone().into_iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.into_iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// A non-zero start state, as after some tokens.
fn warm_state(rng: &mut Rng, h: usize, n: usize) -> Array3<f32> {
    Array3::from_shape_simple_fn((h, n, n), || rng.uniform())
}

/// `scan`, or `chunked` with chunks of `chunk` tokens (0: scan).
fn run(x: [ArrayView2<f32>; 6], s: &mut Array3<f32>, chunk: usize) -> Array2<f32> {
    let [r, w, k, v, a, b] = x;
    match chunk {
        0 => wkv7::scan(r, w, k, v, a, b, s),
        c => wkv7::chunked(r, w, k, v, a, b, s, c),
    }
}

/// Both paths against the f64 recurrence, from a non-zero state, for every chunk length in
/// `chunks` (0 = the scan); `tol` on the output and the final state, relative to their largest
/// value.
fn check_against_reference(x: &Inputs, h: usize, n: usize, chunks: &[usize], tol: f64) {
    let t = x.r.nrows();
    let mut rng = Rng::new(99);
    let s0 = warm_state(&mut rng, h, n);
    let mut s64 = s0.mapv(f64::from);
    let y64 = reference(x, &mut s64);
    for &chunk in chunks {
        let mut s = s0.clone();
        let y = run(x.rows(0..t), &mut s, chunk);
        assert!(
            y.iter().chain(&s).all(|v| v.is_finite()),
            "chunk {chunk}: NaN or Inf"
        );
        let (dy, ds) = (rel_diff(&y, &y64), rel_diff(&s, &s64));
        println!("H={h} N={n} T={t} chunk={chunk:3}: relative Δy {dy:.1e}, Δstate {ds:.1e}");
        assert!(
            dy < tol,
            "H={h} N={n} T={t} chunk {chunk}: outputs differ by {dy:e}"
        );
        assert!(
            ds < tol,
            "H={h} N={n} T={t} chunk {chunk}: states differ by {ds:e}"
        );
    }
}

#[test]
fn scan_and_chunked_equal_the_f64_recurrence() {
    // T = 257 leaves a last chunk of 1 (chunks 2, 16), 2 (chunk 3) or none (chunk T).
    for (h, n, t) in [(2, 64, 257), (3, 16, 100), (1, 12, 33), (2, 8, 1)] {
        let x = Inputs::new(&mut Rng::new(17 + t as u64), h, n, t);
        check_against_reference(&x, h, n, &[0, 1, 2, 3, 16, 64, t], 1e-5);
    }
}

#[test]
fn chunked_carries_state_across_calls() {
    let (h, n, t) = (2, 16, 100);
    let x = Inputs::new(&mut Rng::new(3), h, n, t);
    let s0 = warm_state(&mut Rng::new(4), h, n);
    let mut whole_state = s0.clone();
    let whole = run(x.rows(0..t), &mut whole_state, 0);
    for (split, chunk) in [(1, 16), (17, 16), (50, 7), (99, 32)] {
        let mut s = s0.clone();
        let first = run(x.rows(0..split), &mut s, chunk);
        let second = run(x.rows(split..t), &mut s, chunk);
        let joined = ndarray::concatenate(Axis(0), &[first.view(), second.view()]).unwrap();
        let d = max_abs_diff(joined.view(), whole.view());
        assert!(
            d < 1e-4,
            "split at {split}, chunk {chunk}: outputs differ by {d}"
        );
        let ds = max_abs_diff_list(&[s.into_dyn()], &[whole_state.clone().into_dyn()]);
        assert!(
            ds < 1e-4,
            "split at {split}, chunk {chunk}: states differ by {ds}"
        );
    }
}

#[test]
fn extreme_decays_stay_finite_and_exact() {
    // Decays exactly 1 and 0, and next to them, mixed per channel and token: the chunked form
    // must fall back from quotients of decays to products of them.
    let (h, n, t) = (2, 16, 80);
    let mut x = Inputs::new(&mut Rng::new(8), h, n, t);
    let choices = [1.0, 0.999_999, 0.9, 0.5, 1e-6, 0.0];
    x.w = Array2::from_shape_fn((t, h * n), |(i, j)| {
        choices[(i * 7 + j * 3) % choices.len()]
    });
    check_against_reference(&x, h, n, &[0, 1, 5, 16, 80], 1e-5);
}

#[test]
fn long_sequences_stay_close_to_f64() {
    // The transition is not a contraction in every direction; over thousands of tokens f32
    // rounding must still not grow.
    let (h, n, t) = (1, 16, 4096);
    let x = Inputs::new(&mut Rng::new(21), h, n, t);
    check_against_reference(&x, h, n, &[0, 16, 64], 1e-4);
}

#[test]
fn value_residual_is_carried_from_block_zero() {
    // Blocks after the first mix their values toward block 0's: carrying `v_first` through the
    // blocks (as the model does) differs from running each block as its own first.
    let model = load_model(&fixture("v7-b"));
    let xs = Rng::new(7).matrix(12, model.config().n_embd, 1.0);
    let run_blocks = |carry: bool| {
        let mut state = model.init_state();
        let mut x = xs.clone();
        let mut v_first = None;
        for (block, s) in model.blocks().iter().zip(state.blocks_mut()) {
            if carry {
                block.forward(&mut x, s, &mut v_first);
            } else {
                block.forward(&mut x, s, &mut None);
            }
        }
        (x, v_first)
    };
    let (carried, v_first) = run_blocks(true);
    let (alone, _) = run_blocks(false);
    assert_eq!(
        v_first.map(|v| v.dim()),
        Some(xs.dim()),
        "block 0 fills v_first [T, C]"
    );
    let d = max_abs_diff(carried.view(), alone.view());
    assert!(d > 1e-3, "the value residual changes the output ({d})");
}

#[test]
fn time_mix_paths_agree_with_the_value_residual() {
    // Block 1 of v7-b (it has a value residual), from a warm state, with v_first given: every
    // path of the layer gives the recurrence's output and state.
    let model = load_model(&fixture("v7-b"));
    let c = model.config().n_embd;
    let TimeMix::V7(att) = &model.blocks()[1].att else {
        panic!("an RWKV-7 block")
    };
    let mut rng = Rng::new(12);
    let mut warm = att.init_state();
    att.forward(rng.matrix(5, c, 1.0).view(), &mut warm);
    let xs = rng.matrix(257, c, 1.0);
    let v_first = rng.matrix(257, c, 1.0);
    let run = |path: Path| {
        let mut s = warm.clone();
        let mut vf = Some(v_first.clone());
        let y = att.forward_path_with_v_first(xs.view(), &mut vf, &mut s, path);
        assert_eq!(
            vf.as_ref(),
            Some(&v_first),
            "later blocks leave v_first alone"
        );
        (y, s)
    };
    let (y0, s0) = run(Path::Recurrent);
    for path in [1, 2, 3, 16, 64]
        .map(Path::Chunkwise)
        .into_iter()
        .chain([Path::Parallel])
    {
        let (y, s) = run(path);
        let d = max_abs_diff(y.view(), y0.view());
        assert!(d < 1e-4, "{path:?}: outputs differ by {d}");
        let ds = max_abs_diff_list(&[s.s.into_dyn()], &[s0.s.clone().into_dyn()]);
        assert!(ds < 1e-4, "{path:?}: states differ by {ds}");
    }
    // Without v_first the layer is its own first block: the residual leaves v as it is.
    let (mut a, mut b) = (warm.clone(), warm.clone());
    let mut none = None;
    let alone = att.forward_with_v_first(xs.view(), &mut none, &mut a);
    assert_eq!(alone, att.forward(xs.view(), &mut b));
    assert_ne!(alone, y0);
}

/// A state-tuning file for `model`: `blocks.{l}.att.time_state` `[H, N, N]` with distinct
/// entries, as RWKV-PEFT saves them (converted to safetensors).
fn time_state_file(model: &Model) -> (Vec<u8>, Vec<Array3<f32>>) {
    let c = model.config();
    let (h, n) = (c.n_head, c.head_size);
    let mut rng = Rng::new(31);
    let tuned: Vec<Array3<f32>> = (0..c.n_layer)
        .map(|_| Array3::from_shape_simple_fn((h, n, n), || 0.5 * rng.uniform()))
        .collect();
    let raw: Vec<RawTensor> = tuned
        .iter()
        .enumerate()
        .map(|(l, a)| {
            let a = a.clone().into_dyn();
            let bytes = encode(&a, Dtype::F32);
            (
                format!("blocks.{l}.att.time_state"),
                Dtype::F32,
                a.shape().to_vec(),
                bytes,
            )
        })
        .collect();
    (write_tensors(&raw), tuned)
}

#[test]
fn state_tuning_files_give_the_initial_state() {
    let dir = std::env::temp_dir();
    // RWKV-7: used as stored ([head, value, key]); RWKV-5/6: transposed, as the official
    // package does (`time_state.transpose(1, 2)`).
    for (fixture_name, transposed) in [
        ("v7-a", false),
        ("v7-b", false),
        ("v6-b", true),
        ("v5.2-a", true),
    ] {
        let model = load_model(&fixture(fixture_name));
        let (bytes, tuned) = time_state_file(&model);
        let path = dir.join(format!(
            "tokenshift-time-state-{}-{fixture_name}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        let state = model.state_from_tuning(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for (l, (block, t)) in state.blocks().iter().zip(&tuned).enumerate() {
            let TimeMixState::Wkv(wkv) = &block.att else {
                panic!("{fixture_name}: matrix state expected")
            };
            let expected = if transposed {
                t.clone().permuted_axes([0, 2, 1])
            } else {
                t.clone()
            };
            assert_eq!(wkv.s, expected, "{fixture_name} block {l}");
            assert!(wkv.x_prev.iter().chain(&block.ffn).all(|&v| v == 0.0));
        }
        // The tuned state is a state like any other: it runs, and it matters.
        let tokens = [1, 2, 3];
        let mut tuned_state = state.clone();
        let from_tuned = model
            .forward(&tokens, &mut tuned_state, Logits::Last)
            .unwrap();
        let mut zero = model.init_state();
        let from_zero = model.forward(&tokens, &mut zero, Logits::Last).unwrap();
        assert!(max_abs_diff(from_tuned.view(), from_zero.view()) > 1e-3);
    }
}

#[test]
fn state_tuning_errors_name_the_problem() {
    let model = load_model(&fixture("v7-a"));
    let (bytes, _) = time_state_file(&load_model(&fixture("v7-b")));
    let file = tokenshift::weights::SafeTensorsFile::from_bytes(bytes).unwrap();
    let err = State::from_time_state(&file, model.config()).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { name, .. } if name == "blocks.0.att.time_state"),
        "{err}"
    );
    let empty = tokenshift::weights::SafeTensorsFile::from_bytes(write_tensors(&[])).unwrap();
    let err = State::from_time_state(&empty, model.config()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor(n) if n == "blocks.0.att.time_state"),
        "{err}"
    );
    let v4 = load_model(&fixture("v4-a"));
    let err = State::from_time_state(&empty, v4.config()).unwrap_err();
    assert!(matches!(err, Error::StateMismatch(_)), "{err}");
}

#[test]
#[ignore]
fn wkv7_speed() {
    // A released model's heads (C = 768), prompts of several lengths; the best of many runs.
    let (h, n) = (12, 64);
    for t in [1usize, 2, 4, 8, 16, 64, 512] {
        let x = Inputs::new(&mut Rng::new(5), h, n, t);
        let chunks = [0usize, 8, 16, 32];
        let mut best = [f64::INFINITY; 4];
        for _ in 0..(10_000 / t).clamp(20, 400) {
            for (i, &chunk) in chunks.iter().enumerate() {
                let mut s = Array3::zeros((h, n, n));
                let start = std::time::Instant::now();
                std::hint::black_box(run(x.rows(0..t), &mut s, chunk));
                best[i] = best[i].min(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        print!("H={h} N={n} T={t:3}: scan {:.3} ms", best[0]);
        for (c, ms) in chunks.iter().zip(&best).skip(1) {
            print!(" | chunked({c}) {ms:.3} ms = {:.2}x", best[0] / ms);
        }
        println!();
    }
}
