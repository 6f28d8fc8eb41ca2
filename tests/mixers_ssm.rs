//! The state-space mixers (Mamba-1, Mamba-2, S4D, LMU, HiPPO-LegT/LegS): every path equals the
//! recurrence (from a warm state, across ragged chunks, split and carried, batched), the layers
//! match golden outputs of independent implementations (transformers' `MambaMixer` and
//! `Mamba2Mixer`, a float64 NumPy implementation of the papers; made by
//! `tools/mixers/make_ssm_fixtures.py`, committed, never run by CI), and the constructors name
//! the argument that is wrong.

mod common;

use common::*;
use ndarray::{concatenate, s, Array1, Array2, Array3, ArrayD, Axis, Ix1, Ix2, Ix3};
use std::collections::HashMap;
use tokenshift::mixer::lti::Conv;
use tokenshift::mixer::mamba::{Mamba, MambaParams, MambaState};
use tokenshift::mixer::mamba2::{Mamba2, Mamba2Options, Mamba2Params, Mamba2State};
use tokenshift::mixer::s4d::{S4d, S4dParams, S4dState};
use tokenshift::mixer::{MultiPath, Path};
use tokenshift::Error;

struct Golden(HashMap<String, ArrayD<f32>>);

impl Golden {
    fn load() -> Golden {
        let path = fixtures_dir().join("mixers/ssm.safetensors");
        let bytes = std::fs::read(&path).expect("tests/fixtures/mixers/ssm.safetensors");
        Golden(read_tensors(bytes).into_iter().collect())
    }
    fn get(&self, name: &str) -> ArrayD<f32> {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name}"))
            .clone()
    }
    fn opt(&self, name: &str) -> Option<ArrayD<f32>> {
        self.0.get(name).cloned()
    }
    fn m(&self, name: &str) -> Array2<f32> {
        self.get(name).into_dimensionality::<Ix2>().unwrap()
    }
    fn v(&self, name: &str) -> Array1<f32> {
        self.get(name).into_dimensionality::<Ix1>().unwrap()
    }
    fn t3(&self, name: &str) -> Array3<f32> {
        self.get(name).into_dimensionality::<Ix3>().unwrap()
    }
    fn opt_v(&self, name: &str) -> Option<Array1<f32>> {
        self.opt(name)
            .map(|a| a.into_dimensionality::<Ix1>().unwrap())
    }
}

/// max |a − b| / max(1, max |b|).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn rel2(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    rel(
        a.as_standard_layout().as_slice().unwrap(),
        b.as_standard_layout().as_slice().unwrap(),
    )
}

/// A state seen as numbers.
trait Flat {
    fn flat(&self) -> Vec<f32>;
}

impl Flat for MambaState {
    fn flat(&self) -> Vec<f32> {
        self.conv.iter().chain(&self.ssm).copied().collect()
    }
}

impl Flat for Mamba2State {
    fn flat(&self) -> Vec<f32> {
        self.conv.iter().chain(&self.ssm.s).copied().collect()
    }
}

impl Flat for S4dState {
    fn flat(&self) -> Vec<f32> {
        self.parts().iter().map(|&v| v as f32).collect()
    }
}

fn input(t: usize, c: usize, seed: u64) -> Array2<f32> {
    Rng::new(seed).matrix(t, c, 1.0)
}

/// Every path of `m` against `T` calls of `step` from a warm state, for `T ∈ {1, 5, 40}` and
/// chunks {1, 3, 16, T}; split and carry; `step_batch` against `step`; `T = 0`.
fn check_paths<M>(m: &M, c: usize, paths: &[Path], what: &str, tol: f32)
where
    M: MultiPath,
    M::State: Flat,
{
    let mut warm = m.init_state();
    m.forward(input(6, c, 1).view(), &mut warm);
    let xs = input(40, c, 2);
    for t in [1, 5, 40] {
        let xs = xs.slice(s![..t, ..]);
        let mut ref_state = warm.clone();
        let mut steps = Array2::zeros((t, c));
        for (i, x) in xs.rows().into_iter().enumerate() {
            steps.row_mut(i).assign(&m.step(x, &mut ref_state));
        }
        let mut all: Vec<Path> = paths.to_vec();
        if paths.contains(&Path::Chunkwise(1)) {
            all.extend([3, 16, t].map(Path::Chunkwise));
        }
        for path in all {
            let mut st = warm.clone();
            let y = m.forward_path(xs, &mut st, path);
            let d = rel2(&y, &steps);
            let ds = rel(&st.flat(), &ref_state.flat());
            assert!(d <= tol, "{what} T={t} {path:?}: outputs differ by {d:e}");
            assert!(ds <= tol, "{what} T={t} {path:?}: states differ by {ds:e}");
        }
        let mut st = warm.clone();
        let d = rel2(&m.forward(xs, &mut st), &steps);
        assert!(d <= tol, "{what} T={t} forward: outputs differ by {d:e}");
        for a in [1, t / 2, t - 1] {
            if a == 0 || a >= t {
                continue;
            }
            let mut st = warm.clone();
            let first = m.forward(xs.slice(s![..a, ..]), &mut st);
            let second = m.forward(xs.slice(s![a.., ..]), &mut st);
            let joined = concatenate(Axis(0), &[first.view(), second.view()]).unwrap();
            let d = rel2(&joined, &steps);
            let ds = rel(&st.flat(), &ref_state.flat());
            assert!(d <= tol, "{what} T={t} split at {a}: {d:e}");
            assert!(ds <= tol, "{what} T={t} split at {a}: states {ds:e}");
        }
    }
    // step_batch: three sequences at different points, each row against its own step.
    let mut states: Vec<M::State> = (0..3).map(|_| m.init_state()).collect();
    for (i, st) in states.iter_mut().enumerate() {
        m.forward(input(i + 1, c, 10 + i as u64).view(), st);
    }
    let mut singles = states.clone();
    let rows = input(3, c, 20);
    let mut refs: Vec<&mut M::State> = states.iter_mut().collect();
    let batched = m.step_batch(rows.view(), &mut refs);
    for (b, st) in singles.iter_mut().enumerate() {
        let y = m.step(rows.row(b), st);
        assert!(
            rel(y.as_slice().unwrap(), batched.row(b).to_vec().as_slice()) <= tol,
            "{what}: step_batch row {b}"
        );
        assert_eq!(st.flat(), states[b].flat(), "{what}: step_batch state {b}");
    }
    let mut st = warm.clone();
    assert_eq!(m.forward(xs.slice(s![..0, ..]), &mut st).dim(), (0, c));
    assert_eq!(st.flat(), warm.flat(), "{what}: T = 0 changed the state");
}

fn input_error_names(err: Error, want: &str) {
    assert!(
        matches!(&err, Error::InputShape { what, .. } if what.contains(want)),
        "expected an input error naming `{want}`, got {err}"
    );
    assert!(err.to_string().contains(want), "{err}");
}

const MAMBA_PATHS: [Path; 3] = [Path::Recurrent, Path::Parallel, Path::Chunkwise(1)];

fn mamba_params(g: &Golden, case: &str) -> MambaParams {
    let n = |t: &str| format!("{case}.{t}");
    MambaParams {
        in_proj_weight: g.m(&n("in_proj.weight")),
        in_proj_bias: g.opt_v(&n("in_proj.bias")),
        conv1d_weight: g.t3(&n("conv1d.weight")),
        conv1d_bias: g.opt_v(&n("conv1d.bias")),
        x_proj_weight: g.m(&n("x_proj.weight")),
        dt_proj_weight: g.m(&n("dt_proj.weight")),
        dt_proj_bias: g.v(&n("dt_proj.bias")),
        a_log: g.m(&n("A_log")),
        d: g.v(&n("D")),
        out_proj_weight: g.m(&n("out_proj.weight")),
        out_proj_bias: g.opt_v(&n("out_proj.bias")),
    }
}

fn mamba2_params(g: &Golden, case: &str) -> Mamba2Params {
    let n = |t: &str| format!("{case}.{t}");
    Mamba2Params {
        in_proj_weight: g.m(&n("in_proj.weight")),
        in_proj_bias: g.opt_v(&n("in_proj.bias")),
        conv1d_weight: g.t3(&n("conv1d.weight")),
        conv1d_bias: g.opt_v(&n("conv1d.bias")),
        dt_bias: g.v(&n("dt_bias")),
        a_log: g.v(&n("A_log")),
        d: g.v(&n("D")),
        norm_weight: g.v(&n("norm.weight")),
        out_proj_weight: g.m(&n("out_proj.weight")),
        out_proj_bias: g.opt_v(&n("out_proj.bias")),
    }
}

/// The layer on every path against transformers' whole call (`y`), its prefill + decode
/// (`y_cached`, our `forward` on the prefill then `step`) and its final state.
fn check_golden<M>(
    g: &Golden,
    case: &str,
    m: &M,
    paths: &[Path],
    state_of: impl Fn(&M::State) -> (Array2<f32>, Vec<f32>),
) where
    M: MultiPath,
{
    let x = g.m(&format!("{case}.x"));
    let y = g.m(&format!("{case}.y"));
    let y_cached = g.m(&format!("{case}.y_cached"));
    let conv = g.m(&format!("{case}.conv_state"));
    let ssm = g.get(&format!("{case}.ssm_state"));
    let ssm = ssm.as_standard_layout();
    let mut worst = 0.0f32;
    for &path in paths {
        let mut st = m.init_state();
        let out = m.forward_path(x.view(), &mut st, path);
        let d = rel2(&out, &y);
        assert!(d < 1e-5, "{case} {path:?}: output differs by {d:e}");
        let (c, h) = state_of(&st);
        let (dc, dh) = (rel2(&c, &conv), rel(&h, ssm.as_slice().unwrap()));
        assert!(
            dc < 1e-6 && dh < 1e-5,
            "{case} {path:?}: state {dc:e} {dh:e}"
        );
        worst = worst.max(d).max(dh);
    }
    // Prefill then decode, as transformers' cache does.
    let split = g.v(&format!("{case}.split"))[0] as usize;
    let mut st = m.init_state();
    let mut out = m.forward(x.slice(s![..split, ..]), &mut st);
    for row in x.slice(s![split.., ..]).rows() {
        let o = m.step(row, &mut st).insert_axis(Axis(0));
        out = concatenate(Axis(0), &[out.view(), o.view()]).unwrap();
    }
    let d = rel2(&out, &y_cached);
    assert!(d < 1e-5, "{case} prefill + steps: output differs by {d:e}");
    println!("{case}: max relative error vs transformers = {worst:.2e}");
}

#[test]
fn mamba_matches_transformers() {
    let g = Golden::load();
    for case in ["mamba", "mamba_bias"] {
        let m = Mamba::new(mamba_params(&g, case)).unwrap();
        let mut paths = MAMBA_PATHS.to_vec();
        paths.extend([Path::Chunkwise(4), Path::Chunkwise(7)]);
        check_golden(&g, case, &m, &paths, |s: &MambaState| {
            (s.conv.clone(), s.ssm.iter().copied().collect())
        });
    }
}

#[test]
fn mamba2_matches_transformers() {
    let g = Golden::load();
    for (case, options) in [
        (
            "mamba2",
            Mamba2Options {
                n_groups: 2,
                ..Mamba2Options::default()
            },
        ),
        (
            "mamba2_limit",
            Mamba2Options {
                n_groups: 1,
                time_step_limit: (0.05, 0.5),
                ..Mamba2Options::default()
            },
        ),
    ] {
        let m = Mamba2::new(mamba2_params(&g, case), options).unwrap();
        let paths = [
            Path::Recurrent,
            Path::Parallel,
            Path::Chunkwise(1),
            Path::Chunkwise(4),
            Path::Chunkwise(7),
        ];
        check_golden(&g, case, &m, &paths, |s: &Mamba2State| {
            (s.conv.clone(), s.ssm.s.iter().copied().collect())
        });
    }
}

#[test]
fn mamba_paths_agree() {
    check_paths(&Mamba::random(16, 8, 3), 16, &MAMBA_PATHS, "mamba", 2e-5);
    check_paths(
        &Mamba::random(24, 4, 4),
        24,
        &MAMBA_PATHS,
        "mamba (R = 2)",
        2e-5,
    );
}

#[test]
fn mamba2_paths_agree() {
    check_paths(
        &Mamba2::random(16, 4, 8, 8, 2, 5),
        16,
        &MAMBA_PATHS,
        "mamba2",
        2e-5,
    );
    check_paths(
        &Mamba2::random(8, 3, 4, 16, 1, 6),
        8,
        &MAMBA_PATHS,
        "mamba2 (one group)",
        2e-5,
    );
}

#[test]
fn mamba_constructor_names_the_wrong_tensor() {
    let g = Golden::load();
    let p = || mamba_params(&g, "mamba");
    assert!(Mamba::new(p()).is_ok());
    // Any memory layout is accepted.
    let mut q = p();
    q.x_proj_weight = q.x_proj_weight.t().to_owned().reversed_axes();
    assert!(Mamba::new(q).is_ok());
    // Wrong shape: out_proj one column short.
    let mut q = p();
    q.out_proj_weight = q.out_proj_weight.slice_move(s![.., 1..]);
    input_error_names(Mamba::new(q).unwrap_err(), "out_proj.weight");
    // Wrong layout: in_proj given transposed ([D, 2E]).
    let mut q = p();
    q.in_proj_weight = q.in_proj_weight.t().to_owned();
    input_error_names(Mamba::new(q).unwrap_err(), "in_proj.weight");
    // Wrong layout: the convolution as [K, 1, E].
    let mut q = p();
    q.conv1d_weight = q.conv1d_weight.permuted_axes([2, 1, 0]).to_owned();
    input_error_names(Mamba::new(q).unwrap_err(), "conv1d.weight");
    // Wrong count: x_proj with one state row too few (R + 2N − 1 rows).
    let mut q = p();
    q.x_proj_weight = q.x_proj_weight.slice_move(s![1.., ..]);
    input_error_names(Mamba::new(q).unwrap_err(), "x_proj.weight");
    // Wrong count: D for one channel too many.
    let mut q = p();
    q.d = Array1::ones(q.d.len() + 1);
    input_error_names(Mamba::new(q).unwrap_err(), "D");
}

#[test]
fn mamba2_constructor_names_the_wrong_tensor() {
    let g = Golden::load();
    let p = || mamba2_params(&g, "mamba2");
    let o = Mamba2Options {
        n_groups: 2,
        ..Mamba2Options::default()
    };
    assert!(Mamba2::new(p(), o).is_ok());
    // Wrong shape: in_proj one row short.
    let mut q = p();
    q.in_proj_weight = q.in_proj_weight.slice_move(s![1.., ..]);
    input_error_names(Mamba2::new(q, o).unwrap_err(), "in_proj.weight");
    // Wrong layout: out_proj transposed.
    let mut q = p();
    q.out_proj_weight = q.out_proj_weight.t().to_owned();
    input_error_names(Mamba2::new(q, o).unwrap_err(), "out_proj.weight");
    // Wrong count: a group count that does not divide the heads; dt_bias for one head more.
    input_error_names(
        Mamba2::new(p(), Mamba2Options { n_groups: 3, ..o }).unwrap_err(),
        "n_groups",
    );
    let mut q = p();
    q.dt_bias = Array1::zeros(q.dt_bias.len() + 1);
    input_error_names(Mamba2::new(q, o).unwrap_err(), "dt_bias");
}

fn s4d_params(g: &Golden, case: &str) -> S4dParams {
    let n = |t: &str| format!("{case}.{t}");
    S4dParams {
        log_dt: g.v(&n("log_dt")),
        log_a_real: g.m(&n("log_A_real")),
        a_imag: g
            .opt(&n("A_imag"))
            .map(|a| a.into_dimensionality::<Ix2>().unwrap()),
        c: g.t3(&n("C")),
        d: g.v(&n("D")),
    }
}

/// Every path and both convolutions against the f64 NumPy recurrence: outputs and final state.
fn check_lti_golden<M: MultiPath>(
    g: &Golden,
    case: &str,
    layers: &[(M, &str)],
    paths: &[Path],
    state_of: impl Fn(&M::State) -> Vec<f32>,
    tol: f32,
) {
    let x = g.m(&format!("{case}.x"));
    let y = g.m(&format!("{case}.y"));
    let want = g.get(&format!("{case}.state"));
    let want = want.as_standard_layout();
    let mut worst = 0.0f32;
    for (m, how) in layers {
        for &path in paths {
            let mut st = m.init_state();
            let out = m.forward_path(x.view(), &mut st, path);
            let d = rel2(&out, &y);
            let ds = rel(&state_of(&st), want.as_slice().unwrap());
            assert!(d < tol, "{case} {how} {path:?}: output differs by {d:e}");
            assert!(ds < tol, "{case} {how} {path:?}: state differs by {ds:e}");
            worst = worst.max(d).max(ds);
        }
    }
    println!("{case}: max relative error vs the f64 reference = {worst:.2e}");
}

fn s4d_with(p: S4dParams, conv: Conv) -> S4d {
    S4d::new(p).unwrap().with_conv(conv)
}

#[test]
fn s4d_matches_the_f64_reference() {
    let g = Golden::load();
    let paths = [
        Path::Recurrent,
        Path::Parallel,
        Path::Chunkwise(1),
        Path::Chunkwise(7),
        Path::Chunkwise(16),
    ];
    for case in ["s4d", "s4d_real", "s4d_long"] {
        let layers = [
            (s4d_with(s4d_params(&g, case), Conv::Direct), "direct"),
            (s4d_with(s4d_params(&g, case), Conv::Fft), "fft"),
        ];
        check_lti_golden(&g, case, &layers, &paths, S4dState::flat, 1e-5);
    }
}

#[test]
fn s4d_paths_agree() {
    for complex in [true, false] {
        for conv in [Conv::Direct, Conv::Fft] {
            let m = S4d::random(6, 8, complex, 7).with_conv(conv);
            check_paths(
                &m,
                6,
                &MAMBA_PATHS,
                &format!("s4d {complex} {conv:?}"),
                1e-5,
            );
        }
    }
}

#[test]
fn s4d_constructor_names_the_wrong_tensor() {
    let g = Golden::load();
    let p = || s4d_params(&g, "s4d");
    assert!(S4d::new(p()).is_ok());
    // Wrong shape: log_dt for one channel too many.
    let mut q = p();
    q.log_dt = Array1::zeros(q.log_dt.len() + 1);
    input_error_names(S4d::new(q).unwrap_err(), "log_dt");
    // Wrong layout: C as [H, 2, M].
    let mut q = p();
    q.c = q.c.permuted_axes([0, 2, 1]).to_owned();
    input_error_names(S4d::new(q).unwrap_err(), "C");
    // Wrong count: one imaginary part too many; a real C for a complex diagonal.
    let mut q = p();
    q.a_imag = Some(Array2::zeros((3, 5)));
    input_error_names(S4d::new(q).unwrap_err(), "A_imag");
    let mut q = p();
    q.c = q.c.slice_move(s![.., .., ..1]);
    input_error_names(S4d::new(q).unwrap_err(), "C");
}
