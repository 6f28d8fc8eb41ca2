//! The state-space mixers (Mamba-1, Mamba-2, S4D, LMU, HiPPO-LegT/LegS): every path equals the
//! recurrence (from a warm state, across ragged chunks, split and carried, batched), the layers
//! match golden outputs of independent implementations (transformers' `MambaMixer` and
//! `Mamba2Mixer`, a float64 NumPy implementation of the papers; made by
//! `tools/mixers/make_ssm_fixtures.py`, committed, never run by CI), and the constructors name
//! the argument that is wrong.

mod common;

use common::golden::{input_error_names, rel, Golden};
use common::*;
use ndarray::{concatenate, s, Array1, Array2, ArrayView2, Axis, Ix2};
use tokenshift::mixer::hippo::{legs_matrices, legt_matrices, HippoParams, Legs, LegsState, Legt};
use tokenshift::mixer::lmu::{lmu_matrices, Lmu, LmuParams, LmuState};
use tokenshift::mixer::lti::Conv;
use tokenshift::mixer::lti::{self, LtiMemory};
use tokenshift::mixer::mamba::{Mamba, MambaParams, MambaState};
use tokenshift::mixer::mamba2::{Mamba2, Mamba2Options, Mamba2Params, Mamba2State};
use tokenshift::mixer::s4d::{S4d, S4dParams, S4dState};
use tokenshift::mixer::{MultiPath, Path, SequenceMixer};

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

impl Flat for LmuState {
    fn flat(&self) -> Vec<f32> {
        self.m.iter().map(|&v| v as f32).collect()
    }
}

impl Flat for Array2<f64> {
    fn flat(&self) -> Vec<f32> {
        self.iter().map(|&v| v as f32).collect()
    }
}

impl Flat for LegsState {
    fn flat(&self) -> Vec<f32> {
        let mut v = self.s.flat();
        v.push(self.step as f32);
        v
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
    check_sequence(m, c, paths, &|x, s, p| m.forward_path(x, s, p), what, tol);
}

/// Runs a mixer's sequence path by name.
type Runner<'a, M> =
    dyn Fn(ArrayView2<f32>, &mut <M as SequenceMixer>::State, Path) -> Array2<f32> + 'a;

/// As [`check_paths`] for any mixer, its paths run by `run`.
fn check_sequence<M>(m: &M, c: usize, paths: &[Path], run: &Runner<M>, what: &str, tol: f32)
where
    M: SequenceMixer,
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
            let y = run(xs, &mut st, path);
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
    let g = Golden::load("ssm.safetensors");
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
    let g = Golden::load("ssm.safetensors");
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
    let g = Golden::load("ssm.safetensors");
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
    let g = Golden::load("ssm.safetensors");
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
    let g = Golden::load("ssm.safetensors");
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
    let g = Golden::load("ssm.safetensors");
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

const LTI_PATHS: [Path; 5] = [
    Path::Recurrent,
    Path::Parallel,
    Path::Chunkwise(1),
    Path::Chunkwise(7),
    Path::Chunkwise(16),
];

fn lmu_params(g: &Golden) -> LmuParams {
    LmuParams {
        encoder: g.m("lmu.encoder"),
        memory_kernel: g.m("lmu.memory_kernel"),
        input_kernel: g.m("lmu.input_kernel"),
        bias: g.v("lmu.bias"),
    }
}

fn hippo_params(g: &Golden, case: &str) -> HippoParams {
    HippoParams {
        w: g.m(&format!("{case}.W")),
        d: g.v(&format!("{case}.D")),
    }
}

#[test]
fn lmu_and_legt_match_the_f64_reference() {
    let g = Golden::load("ssm.safetensors");
    let theta = g.v("lmu.theta")[0] as f64;
    let lmu = |conv| Lmu::new(6, theta, lmu_params(&g)).unwrap().with_conv(conv);
    let layers = [(lmu(Conv::Direct), "direct"), (lmu(Conv::Fft), "fft")];
    check_lti_golden(&g, "lmu", &layers, &LTI_PATHS, LmuState::flat, 1e-5);
    let theta = g.v("legt.theta")[0] as f64;
    let legt = |conv| {
        Legt::new(theta, hippo_params(&g, "legt"))
            .unwrap()
            .with_conv(conv)
    };
    let layers = [(legt(Conv::Direct), "direct"), (legt(Conv::Fft), "fft")];
    check_lti_golden(&g, "legt", &layers, &LTI_PATHS, Array2::<f64>::flat, 1e-5);
}

#[test]
fn legs_matches_the_f64_reference() {
    let g = Golden::load("ssm.safetensors");
    let m = Legs::new(hippo_params(&g, "legs")).unwrap();
    let mut st = m.init_state();
    let y = m.forward(g.m("legs.x").view(), &mut st);
    let d = rel2(&y, &g.m("legs.y"));
    let want = g.m("legs.state");
    let ds = rel(&st.s.flat(), want.as_slice().unwrap());
    assert!(d < 1e-5 && ds < 1e-5, "legs: {d:e} {ds:e}");
    println!(
        "legs: max relative error vs the f64 reference = {:.2e}",
        d.max(ds)
    );
}

#[test]
fn lmu_legt_and_legs_paths_agree() {
    for conv in [Conv::Direct, Conv::Fft] {
        let m = Lmu::random(6, 3, 8, 20.0, 1).with_conv(conv);
        check_paths(&m, 6, &MAMBA_PATHS, &format!("lmu {conv:?}"), 1e-5);
        let m = Legt::random(5, 12, 30.0, 2).with_conv(conv);
        check_paths(&m, 5, &MAMBA_PATHS, &format!("legt {conv:?}"), 1e-5);
    }
    let m = Legs::random(5, 12, 3);
    check_sequence(
        &m,
        5,
        &[Path::Recurrent],
        &|x, s, _| m.forward(x, s),
        "legs",
        1e-5,
    );
}

#[test]
fn legt_is_the_lmu_memory_in_the_orthonormal_basis() {
    let (q, theta) = (10, 17.0);
    let (a, b) = lmu_matrices(q, theta);
    let lmu = LtiMemory::zoh(&a, &b);
    let (a, b) = legt_matrices(q, theta);
    let legt = LtiMemory::zoh(&a, &b);
    let u = input(50, 2, 9).mapv(f64::from);
    let (mut m, mut s) = (Array2::zeros((2, q)), Array2::zeros((2, q)));
    let (mm, ss) = (
        lmu.recurrent(u.view(), &mut m),
        legt.recurrent(u.view(), &mut s),
    );
    for ((idx, &mv), &sv) in mm.indexed_iter().zip(ss.iter()) {
        let r = ((2 * idx.2 + 1) as f64).sqrt();
        assert!((mv / r - sv).abs() < 1e-10, "{idx:?}: {mv} / {r} vs {sv}");
    }
}

#[test]
fn legs_holds_a_constant_exactly_and_reconstructs_it() {
    let n = 8;
    let (a, b) = legs_matrices(n);
    // (f, 0, …, 0) is the fixed point of −A s + B f for constant f.
    let s = Array1::from_shape_fn(n, |i| if i == 0 { 2.5 } else { 0.0 });
    let resid = &b * 2.5 - a.dot(&s);
    assert!(resid.iter().all(|r| r.abs() < 1e-12), "{resid}");
    let m = Legs::new(HippoParams {
        w: Array2::zeros((1, n)),
        d: Array1::zeros(1),
    })
    .unwrap();
    let mut st = m.init_state();
    m.forward(Array2::from_elem((100, 1), 2.5f32).view(), &mut st);
    assert_eq!(st.step, 100);
    for (i, &v) in st.s.iter().enumerate() {
        let want = if i == 0 { 2.5 } else { 0.0 };
        assert!((v - want).abs() < 1e-12, "coefficient {i}: {v}");
    }
}

#[test]
fn fft_convolution_and_matrix_exponential_match_their_definitions() {
    let mut rng = Rng::new(4);
    for t in [1, 2, 5, 64, 300] {
        let k = rng.matrix(t, 1, 1.0).mapv(f64::from);
        let u = rng.matrix(t, 1, 1.0).mapv(f64::from);
        let direct = lti::causal_conv(k.column(0), u.column(0), Conv::Direct);
        let fft = lti::causal_conv(k.column(0), u.column(0), Conv::Fft);
        let d = direct
            .iter()
            .zip(&fft)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-10, "T={t}: FFT convolution differs by {d:e}");
    }
    // A rotation generator: e^{[[0, −w], [w, 0]]} is the rotation by w; large norms exercise
    // the squaring.
    for w in [0.1f64, 1.0, 7.5, 40.0] {
        let a = ndarray::arr2(&[[0.0, -w], [w, 0.0]]);
        let e = lti::expm(&a);
        let want = ndarray::arr2(&[[w.cos(), -w.sin()], [w.sin(), w.cos()]]);
        let d = (&e - &want).iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(d < 1e-12 * w.max(1.0), "w={w}: {d:e}");
    }
    // Zero-order hold of a scalar system: ā = e^{a}, b̄ = (e^{a} − 1)/a · b.
    let (ab, bb) = lti::zoh(&ndarray::arr2(&[[-0.3]]), &ndarray::arr1(&[2.0]));
    assert!((ab[[0, 0]] - (-0.3f64).exp()).abs() < 1e-15);
    assert!((bb[0] - (-0.3f64).exp_m1() / -0.3 * 2.0).abs() < 1e-15);
}

#[test]
fn lmu_and_hippo_constructors_name_the_wrong_argument() {
    let g = Golden::load("ssm.safetensors");
    assert!(Lmu::new(6, 12.0, lmu_params(&g)).is_ok());
    // Wrong shape: memory kernel one column short.
    let mut p = lmu_params(&g);
    p.memory_kernel = p.memory_kernel.slice_move(s![.., 1..]);
    input_error_names(Lmu::new(6, 12.0, p).unwrap_err(), "memory_kernel");
    // Wrong layout: the encoder transposed ([C, d_m]).
    let mut p = lmu_params(&g);
    p.encoder = p.encoder.t().to_owned();
    input_error_names(Lmu::new(6, 12.0, p).unwrap_err(), "memory_kernel");
    // Wrong count: the order does not match the memory kernel; a bias too long; no window.
    input_error_names(
        Lmu::new(5, 12.0, lmu_params(&g)).unwrap_err(),
        "memory_kernel",
    );
    input_error_names(Lmu::new(0, 12.0, lmu_params(&g)).unwrap_err(), "order");
    input_error_names(Lmu::new(6, 0.0, lmu_params(&g)).unwrap_err(), "theta");
    let mut p = lmu_params(&g);
    p.bias = Array1::zeros(p.bias.len() + 1);
    input_error_names(Lmu::new(6, 12.0, p).unwrap_err(), "bias");
    // HiPPO: W transposed no longer matches D; D too long; no window.
    let p = || hippo_params(&g, "legt");
    assert!(Legt::new(20.0, p()).is_ok() && Legs::new(p()).is_ok());
    let mut q = p();
    q.w = q.w.t().to_owned();
    input_error_names(Legt::new(20.0, q).unwrap_err(), "D");
    let mut q = p();
    q.d = Array1::zeros(q.d.len() + 1);
    input_error_names(Legs::new(q).unwrap_err(), "D");
    input_error_names(Legt::new(-1.0, p()).unwrap_err(), "theta");
    let mut q = p();
    q.w = Array2::zeros((3, 0));
    input_error_names(Legs::new(q).unwrap_err(), "W");
}
