//! Cost per token of the state-space mixers (Mamba-1, Mamba-2, S4D, LMU, HiPPO-LegT/LegS) on
//! each path at T = 256 and 4096, timed directly (no criterion: one layer call at T = 4096 takes
//! up to seconds on the quadratic paths, which are only run at T = 256).
//!
//! `cargo bench --bench mixers_ssm` prints one line per (layer, path, T): the best of a few
//! calls, in µs per token. Width 256 everywhere; the sizes are printed with each layer.

mod common;

use common::{filled, name_filter, per_token, steps_per_token};
use tokenshift::mixer::hippo::{Legs, Legt};
use tokenshift::mixer::lmu::Lmu;
use tokenshift::mixer::lti::Conv;
use tokenshift::mixer::mamba::Mamba;
use tokenshift::mixer::mamba2::Mamba2;
use tokenshift::mixer::s4d::S4d;
use tokenshift::mixer::{MultiPath, Path, SequenceMixer};

const WIDTH: usize = 256;

/// `step` (T calls) and each of `paths`; `long` paths also at T = 4096.
fn bench<M: MultiPath>(name: &str, m: &M, step: bool, paths: &[(Path, bool)]) {
    for t in [256usize, 4096] {
        let xs = filled(t, WIDTH);
        let reps = if t == 256 { 3 } else { 1 };
        if step {
            let us = steps_per_token(m, &xs, reps);
            println!("{name:<36} {:<16} T={t:<5} {us:>9.2} µs/token", "step");
        }
        for &(path, long) in paths {
            if t > 256 && !long {
                continue;
            }
            let us = per_token(t, reps, || {
                let mut st = m.init_state();
                m.forward_path(xs.view(), &mut st, path).len()
            });
            println!(
                "{name:<36} {:<16} T={t:<5} {us:>9.2} µs/token",
                format!("{path:?}")
            );
        }
    }
}

/// An LTI layer: its parallel path with the direct convolution (`O(T²)`, T = 256 only), then
/// `step` and every path with the FFT.
fn bench_lti<M: MultiPath>(name: &str, make: impl Fn(Conv) -> M) {
    bench(
        &format!("{name} Direct"),
        &make(Conv::Direct),
        false,
        &[(Path::Parallel, false)],
    );
    bench(
        &format!("{name} Fft"),
        &make(Conv::Fft),
        true,
        &[
            (Path::Recurrent, true),
            (Path::Parallel, true),
            (Path::Chunkwise(64), true),
        ],
    );
}

fn main() {
    let on = name_filter();
    if on("mamba1") {
        let m = Mamba::random(WIDTH, 16, 1);
        bench(
            "mamba1 (E=512, N=16)",
            &m,
            true,
            &[
                (Path::Recurrent, true),
                (Path::Chunkwise(16), true),
                (Path::Parallel, false),
            ],
        );
    }
    if on("mamba2") {
        let m = Mamba2::random(WIDTH, 8, 64, 64, 1, 2);
        bench(
            "mamba2 (H=8, P=64, N=64, G=1)",
            &m,
            true,
            &[
                (Path::Recurrent, true),
                (Path::Chunkwise(64), true),
                (Path::Parallel, false),
            ],
        );
    }
    if on("s4d") {
        bench_lti("s4d (H=256, M=32 complex)", |conv| {
            S4d::random(WIDTH, 32, true, 3).with_conv(conv)
        });
    }
    if on("lmu") {
        bench_lti("lmu (d_m=4, q=32)", |conv| {
            Lmu::random(WIDTH, 4, 32, 256.0, 4).with_conv(conv)
        });
    }
    if on("legt") {
        bench_lti("legt (C=256, N=32)", |conv| {
            Legt::random(WIDTH, 32, 256.0, 5).with_conv(conv)
        });
    }
    if on("legs") {
        let m = Legs::random(WIDTH, 32, 6);
        for t in [256usize, 4096] {
            let xs = filled(t, WIDTH);
            let us = per_token(t, 1, || {
                let mut st = m.init_state();
                m.forward(xs.view(), &mut st).len()
            });
            println!(
                "{:<36} {:<16} T={t:<5} {us:>9.2} µs/token",
                "legs (C=256, N=32)", "forward"
            );
        }
    }
}
