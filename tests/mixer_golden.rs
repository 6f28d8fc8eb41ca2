//! The mixer family against independent implementations: golden outputs of fla 0.6.0's naive
//! functions (linear attention, retention, simple GLA, GLA, RWKV-6) and torchscale 0.3.0's
//! MultiScaleRetention, made by `tools/mixers/make_fixtures.py` (committed, never run by CI).
//! Every path of our kernel is checked, from the fixture's initial state where it has one.

mod common;

use common::golden::{rel, Golden};
use ndarray::{Array1, Array2, Array3};
use tokenshift::mixer::outer_product::{self, Gate, Inputs, OuterState, ReadOut};
use tokenshift::mixer::retention::{log_gammas, Retention};
use tokenshift::mixer::{MultiPath, Path, SequenceMixer};
use tokenshift::ops::{HeadNorm, NormKind};

const PATHS: [Path; 5] = [
    Path::Recurrent,
    Path::Parallel,
    Path::Chunkwise(1),
    Path::Chunkwise(7),
    Path::Chunkwise(16),
];

/// Runs `x` on every path from `init` and compares the output with `o` and the final state with
/// `s` (and `z`). Returns the largest relative error.
fn check(
    what: &str,
    x: &Inputs,
    init: &OuterState,
    o: &Array2<f32>,
    s: Option<&Array3<f32>>,
    z: Option<&Array1<f32>>,
) -> f32 {
    let mut worst = 0.0f32;
    for path in PATHS {
        let mut st = init.clone();
        let y = match path {
            Path::Recurrent => outer_product::recurrent(x, &mut st),
            Path::Parallel => outer_product::parallel(x, &mut st),
            Path::Chunkwise(c) => outer_product::chunkwise(x, &mut st, c),
        };
        let d = rel(y.as_slice().unwrap(), o.as_slice().unwrap());
        worst = worst.max(d);
        assert!(d < 2e-5, "{what} {path:?}: output differs by {d:e}");
        if let Some(s) = s {
            let ds = rel(st.s.as_slice().unwrap(), s.as_slice().unwrap());
            worst = worst.max(ds);
            assert!(ds < 2e-5, "{what} {path:?}: state differs by {ds:e}");
        }
        if let (Some(z), Some(zz)) = (z, &st.z) {
            let dz = rel(zz.as_slice().unwrap(), z.as_slice().unwrap());
            worst = worst.max(dz);
            assert!(dz < 2e-5, "{what} {path:?}: normaliser differs by {dz:e}");
        }
    }
    println!("{what}: max relative error vs the oracle = {worst:.2e}");
    worst
}

#[test]
fn linear_attention_matches_fla() {
    let g = Golden::load("golden.safetensors");
    let (q, k, v) = (
        g.m("linear_attn.q"),
        g.m("linear_attn.k"),
        g.m("linear_attn.v"),
    );
    let x = Inputs {
        eps: 1e-10, // fla's
        ..Inputs::new(q.view(), k.view(), v.view())
    };
    let init = OuterState {
        s: g.t3("linear_attn.s0"),
        z: Some(g.m("linear_attn.z0")),
    };
    let z = g.m("linear_attn.z");
    let z = z.into_shape_with_order(16).unwrap();
    check(
        "linear attention (fla naive_recurrent_linear_attn, normalize)",
        &x,
        &init,
        &g.m("linear_attn.o"),
        Some(&g.t3("linear_attn.s")),
        Some(&z),
    );
}

#[test]
fn retention_matches_fla() {
    let g = Golden::load("golden.safetensors");
    let (q, k, v) = (g.m("retention.q"), g.m("retention.k"), g.m("retention.v"));
    let gamma = log_gammas(2);
    let x = Inputs {
        gate: Gate::Head(gamma.view()),
        ..Inputs::new(q.view(), k.view(), v.view())
    };
    check(
        "retention (fla naive_retention)",
        &x,
        &OuterState::new(2, 8, 8, false),
        &g.m("retention.o"),
        None,
        None,
    );
    // With a carried state, through fla's simple-GLA recurrence with g = ln γ_h.
    let (q, k, v) = (
        g.m("retention_state.q"),
        g.m("retention_state.k"),
        g.m("retention_state.v"),
    );
    let head = g.m("retention_state.g").row(0).to_owned();
    let x = Inputs {
        gate: Gate::Head(head.view()),
        ..Inputs::new(q.view(), k.view(), v.view())
    };
    let init = OuterState {
        s: g.t3("retention_state.s0"),
        z: None,
    };
    check(
        "retention with a state (fla naive_recurrent_simple_gla)",
        &x,
        &init,
        &g.m("retention_state.o"),
        Some(&g.t3("retention_state.s")),
        None,
    );
}

#[test]
fn scalar_data_dependent_gate_matches_fla_simple_gla() {
    let g = Golden::load("golden.safetensors");
    let (q, k, v) = (
        g.m("simple_gla.q"),
        g.m("simple_gla.k"),
        g.m("simple_gla.v"),
    );
    let per_head = g.m("simple_gla.g"); // [T, H]
    let gate = Array2::from_shape_fn((q.nrows(), 16), |(t, c)| per_head[[t, c / 8]]);
    let x = Inputs {
        gate: Gate::KeyToken(gate.view()),
        ..Inputs::new(q.view(), k.view(), v.view())
    };
    let init = OuterState {
        s: g.t3("simple_gla.s0"),
        z: None,
    };
    check(
        "simple GLA (fla naive_recurrent_simple_gla)",
        &x,
        &init,
        &g.m("simple_gla.o"),
        Some(&g.t3("simple_gla.s")),
        None,
    );
}

#[test]
fn gla_matches_fla() {
    let g = Golden::load("golden.safetensors");
    for case in ["gla", "gla_strong"] {
        let n = |t: &str| format!("{case}.{t}");
        let (q, k, v, gk) = (g.m(&n("q")), g.m(&n("k")), g.m(&n("v")), g.m(&n("gk")));
        let x = Inputs {
            gate: Gate::KeyToken(gk.view()),
            ..Inputs::new(q.view(), k.view(), v.view())
        };
        let init = OuterState {
            s: g.t3(&n("s0")),
            z: None,
        };
        check(
            &format!("{case} (fla naive_recurrent_gla)"),
            &x,
            &init,
            &g.m(&n("o")),
            Some(&g.t3(&n("s"))),
            None,
        );
    }
}

#[test]
fn rwkv6_kernel_matches_fla() {
    let g = Golden::load("golden.safetensors");
    let (q, k, v, w) = (
        g.m("rwkv6.q"),
        g.m("rwkv6.k"),
        g.m("rwkv6.v"),
        g.m("rwkv6.w"),
    );
    let u = g.v("rwkv6.u");
    let x = Inputs {
        gate: Gate::KeyToken(w.view()),
        read_out: ReadOut::Bonus(u.view()),
        ..Inputs::new(q.view(), k.view(), v.view())
    };
    let init = OuterState {
        s: g.t3("rwkv6.s0"),
        z: None,
    };
    check(
        "RWKV-6 WKV (fla naive_recurrent_rwkv6)",
        &x,
        &init,
        &g.m("rwkv6.o"),
        Some(&g.t3("rwkv6.s")),
        None,
    );
    // wkv::scan (the model's recurrent kernel) takes the decay itself, not its log.
    let mut s = g.t3("rwkv6.s0");
    let y = tokenshift::mixer::wkv::scan(
        q.view(),
        k.view(),
        v.view(),
        w.mapv(f32::exp).view(),
        u.view().into_shape_with_order((2, 8)).unwrap(),
        &mut s,
    );
    let o = g.m("rwkv6.o");
    assert!(rel(y.as_slice().unwrap(), o.as_slice().unwrap()) < 2e-5);
}

#[test]
fn retention_layer_matches_torchscale() {
    let g = Golden::load("golden.safetensors");
    let w = |n: &str| g.m(&format!("torchscale_retnet.{n}"));
    let m = Retention::new(
        2,
        8,
        16,
        [
            w("q_proj"),
            w("k_proj"),
            w("v_proj"),
            w("g_proj"),
            w("out_proj"),
        ],
        log_gammas(2),
        false,
        HeadNorm::plain(32, 2, 1e-12, NormKind::Rms),
    )
    .unwrap();
    let xs = w("x");
    let mut worst = 0.0f32;
    for (oracle, expected) in [
        ("parallel", w("o_parallel")),
        ("recurrent", w("o_recurrent")),
    ] {
        for path in PATHS {
            let mut st = m.init_state();
            let y = m.forward_path(xs.view(), &mut st, path);
            let d = rel(y.as_slice().unwrap(), expected.as_slice().unwrap());
            worst = worst.max(d);
            assert!(d < 1e-4, "torchscale {oracle} vs our {path:?}: {d:e}");
        }
    }
    println!("retention layer vs torchscale MultiScaleRetention: max relative error = {worst:.2e}");
}
