//! Cost per token of the recurrent networks (LSTM, GRU: step and forward; minGRU, minLSTM: step
//! and each path) at T = 256 and 4096, timed directly like `benches/mixers_ssm.rs`.
//!
//! `cargo bench --bench mixers_rnn` prints one line per (layer, path, T): the best of a few
//! calls, in µs per token. Input and hidden width 256.

mod common;

use common::{filled, name_filter, per_token, steps_per_token};
use tokenshift::mixer::min_rnn::{MinGru, MinLstm};
use tokenshift::mixer::rnn::{Gru, Lstm};
use tokenshift::mixer::{MultiPath, Path, SequenceMixer};

const WIDTH: usize = 256;

fn line(name: &str, what: &str, t: usize, us: f64) {
    println!("{name:<12} {what:<16} T={t:<5} {us:>9.2} µs/token");
}

/// `step` (T calls) and `forward` at both lengths.
fn bench<M: SequenceMixer>(name: &str, m: &M) {
    for t in [256usize, 4096] {
        let xs = filled(t, WIDTH);
        let reps = if t == 256 { 3 } else { 1 };
        let us = steps_per_token(m, &xs, reps);
        line(name, "step", t, us);
        let us = per_token(t, reps, || m.forward(xs.view(), &mut m.init_state()).len());
        line(name, "forward", t, us);
    }
}

/// `step`, `forward` and every path.
fn bench_paths<M: MultiPath>(name: &str, m: &M) {
    bench(name, m);
    for t in [256usize, 4096] {
        let xs = filled(t, WIDTH);
        let reps = if t == 256 { 3 } else { 1 };
        for path in [Path::Recurrent, Path::Parallel, Path::Chunkwise(64)] {
            let us = per_token(t, reps, || {
                m.forward_path(xs.view(), &mut m.init_state(), path).len()
            });
            line(name, &format!("{path:?}"), t, us);
        }
    }
}

fn main() {
    let on = name_filter();
    if on("lstm") {
        bench("lstm", &Lstm::random(WIDTH, WIDTH, 1));
    }
    if on("gru") {
        bench("gru", &Gru::random(WIDTH, WIDTH, 2));
    }
    if on("mingru") {
        bench_paths("mingru", &MinGru::random(WIDTH, WIDTH, 3));
    }
    if on("minlstm") {
        bench_paths("minlstm", &MinLstm::random(WIDTH, WIDTH, 4));
    }
}
