//! The recurrent networks (LSTM, GRU, minGRU, minLSTM): the layers match golden outputs and
//! final states of independent implementations (torch.nn.LSTM / torch.nn.GRU and a float64
//! NumPy implementation of Feng et al. 2024; made by `tools/mixers/make_rnn_fixtures.py`,
//! committed, never run by CI), every path equals the others (forward and repeated steps,
//! batched steps, the log-space scan and its chunkwise form from warm and zero states, split
//! sequences carrying the state), and the constructors name the argument that is wrong.

mod common;

use common::golden::{input_error_names, rel, Golden};
use ndarray::{concatenate, s, Array1, Array2, Axis};
use tokenshift::mixer::min_rnn::{MinCell, MinGru, MinLstm, MinRnn};
use tokenshift::mixer::rnn::{Cell, Gru, Lstm, LstmState, Rnn};
use tokenshift::mixer::{MultiPath, Path, SequenceMixer};

fn close<D: ndarray::Dimension>(
    a: &ndarray::Array<f32, D>,
    b: &ndarray::Array<f32, D>,
    tol: f32,
    what: &str,
) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let e = rel(
        a.as_standard_layout().as_slice().unwrap(),
        b.as_standard_layout().as_slice().unwrap(),
    );
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

fn torch_layer<K: Cell>(g: &Golden, case: &str) -> Rnn<K> {
    let n = |t: &str| format!("{case}.{t}");
    Rnn::from_torch(
        g.m(&n("weight_ih")),
        g.m(&n("weight_hh")),
        g.v(&n("bias_ih")),
        g.v(&n("bias_hh")),
    )
    .unwrap()
}

/// Random inputs `[t, c]` in `[-2, 2)`, from a simple LCG (the test's own).
fn inputs(t: usize, c: usize, seed: u64) -> Array2<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    Array2::from_shape_simple_fn((t, c), || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    })
}

/// forward == repeated step, step_batch == step, and a split sequence carries the state.
fn paths_agree<M: SequenceMixer>(
    m: &M,
    xs: &Array2<f32>,
    state0: M::State,
    flat: fn(&M::State) -> Vec<f32>,
) {
    let mut s_fwd = state0.clone();
    let y = m.forward(xs.view(), &mut s_fwd);

    let mut s_step = state0.clone();
    let rows: Vec<_> = xs
        .rows()
        .into_iter()
        .map(|x| m.step(x, &mut s_step))
        .collect();
    let views: Vec<_> = rows.iter().map(|r| r.view().insert_axis(Axis(0))).collect();
    let y_step = concatenate(Axis(0), &views).unwrap();
    close(&y_step, &y, 1e-5, "forward vs step");
    assert!(
        rel(&flat(&s_step), &flat(&s_fwd)) <= 1e-5,
        "state: forward vs step"
    );

    let k = xs.nrows() / 3;
    let mut s_split = state0.clone();
    let a = m.forward(xs.slice(s![..k, ..]), &mut s_split);
    let b = m.forward(xs.slice(s![k.., ..]), &mut s_split);
    close(&concatenate![Axis(0), a, b], &y, 1e-5, "split forward");
    assert!(rel(&flat(&s_split), &flat(&s_fwd)) <= 1e-5, "state: split");

    // Three sequences side by side, from different states, one row each per call.
    let mut states = vec![state0.clone(), m.init_state(), s_fwd.clone()];
    let mut singles = states.clone();
    for t in 0..xs.nrows().min(5) {
        let batch = concatenate![
            Axis(0),
            xs.slice(s![t..t + 1, ..]),
            xs.slice(s![t + 1..t + 2, ..]),
            xs.slice(s![t + 2..t + 3, ..])
        ];
        let mut refs: Vec<&mut M::State> = states.iter_mut().collect();
        let yb = m.step_batch(batch.view(), &mut refs);
        for (b, s) in singles.iter_mut().enumerate() {
            let y1 = m.step(batch.row(b), s);
            close(&yb.row(b).to_owned(), &y1, 1e-6, "step_batch vs step");
        }
    }
    for (a, b) in states.iter().zip(&singles) {
        assert!(rel(&flat(a), &flat(b)) <= 1e-6, "state: step_batch vs step");
    }
}

fn lstm_flat(s: &LstmState) -> Vec<f32> {
    s.h.iter().chain(s.c.iter()).copied().collect()
}

fn h_flat(s: &Array1<f32>) -> Vec<f32> {
    s.to_vec()
}

#[test]
fn lstm_matches_torch() {
    let g = Golden::load("rnn.safetensors");
    let m: Lstm = torch_layer(&g, "lstm");
    assert_eq!((m.input(), m.hidden()), (8, 6));
    let x = g.m("lstm.x");
    let s0 = LstmState {
        h: g.v("lstm.h0"),
        c: g.v("lstm.c0"),
    };
    let mut s = s0.clone();
    let y = m.forward(x.view(), &mut s);
    close(&y, &g.m("lstm.y"), 2e-6, "lstm y");
    close(&s.h, &g.v("lstm.h"), 2e-6, "lstm h");
    close(&s.c, &g.v("lstm.c"), 2e-6, "lstm c");
    paths_agree(&m, &x, s0, lstm_flat);
}

#[test]
fn gru_matches_torch() {
    let g = Golden::load("rnn.safetensors");
    let m: Gru = torch_layer(&g, "gru");
    let x = g.m("gru.x");
    let mut s = g.v("gru.h0");
    let y = m.forward(x.view(), &mut s);
    close(&y, &g.m("gru.y"), 2e-6, "gru y");
    close(&s, &g.v("gru.h"), 2e-6, "gru h");
    paths_agree(&m, &x, g.v("gru.h0"), h_flat);
}

const PATHS: [Path; 7] = [
    Path::Recurrent,
    Path::Parallel,
    Path::Chunkwise(1),
    Path::Chunkwise(4),
    Path::Chunkwise(5),
    Path::Chunkwise(13),
    Path::Chunkwise(64),
];

fn min_golden<K: MinCell>(case: &str, names: &[&str]) {
    let g = Golden::load("rnn.safetensors");
    let ws: Vec<_> = names.iter().map(|n| g.m(&format!("{case}.{n}"))).collect();
    let m = MinRnn::<K>::new(&ws).unwrap();
    let x = g.m(&format!("{case}.x"));
    for path in PATHS {
        let mut h = g.v(&format!("{case}.h0"));
        let y = m.forward_path(x.view(), &mut h, path);
        close(
            &y,
            &g.m(&format!("{case}.y")),
            2e-6,
            &format!("{case} y {path:?}"),
        );
        close(
            &h,
            &g.v(&format!("{case}.h")),
            2e-6,
            &format!("{case} h {path:?}"),
        );
    }
    paths_agree(&m, &x, g.v(&format!("{case}.h0")), h_flat);
}

#[test]
fn min_gru_matches_numpy() {
    min_golden::<tokenshift::mixer::min_rnn::MinGruCell>("mingru", &["w_z", "w_h"]);
}

#[test]
fn min_lstm_matches_numpy() {
    min_golden::<tokenshift::mixer::min_rnn::MinLstmCell>("minlstm", &["w_f", "w_i", "w_h"]);
}

/// Every path of a long call equals the recurrence, from the zero state (`ln 0 = −∞` in the
/// scan) and from a warm one, and leaves the same state.
fn min_paths_long<K: MinCell>(m: &MinRnn<K>) {
    let xs = inputs(300, m.input(), 7);
    let mut warm = m.init_state();
    m.forward(inputs(20, m.input(), 8).view(), &mut warm);
    for s0 in [m.init_state(), warm] {
        let mut s_ref = s0.clone();
        let y_ref = m.forward_path(xs.view(), &mut s_ref, Path::Recurrent);
        for path in PATHS {
            let mut s = s0.clone();
            let y = m.forward_path(xs.view(), &mut s, path);
            close(&y, &y_ref, 2e-5, &format!("{path:?} vs recurrent"));
            close(&s, &s_ref, 2e-5, &format!("state {path:?} vs recurrent"));
        }
        paths_agree(m, &xs, s0, h_flat);
    }
    let mut s = m.init_state();
    assert_eq!(
        m.forward_path(xs.slice(s![..0, ..]), &mut s, Path::Parallel)
            .dim(),
        (0, m.hidden())
    );
    assert_eq!(s, m.init_state(), "an empty call changes nothing");
}

#[test]
fn min_paths_agree_on_long_sequences() {
    min_paths_long(&MinGru::random(12, 16, 1));
    min_paths_long(&MinLstm::random(16, 16, 2));
}

#[test]
fn lstm_gru_square_and_rectangular() {
    for (i, h) in [(16, 16), (5, 9)] {
        let xs = inputs(40, i, 3);
        let m = Lstm::random(i, h, 4);
        assert_eq!(m.forward(xs.view(), &mut m.init_state()).dim(), (40, h));
        paths_agree(&m, &xs, m.init_state(), lstm_flat);
        let m = Gru::random(i, h, 5);
        paths_agree(&m, &xs, m.init_state(), h_flat);
    }
}

#[test]
#[should_panic(expected = "chunk must be positive")]
fn chunk_zero_panics() {
    let m = MinGru::random(4, 4, 1);
    m.forward_path(
        inputs(3, 4, 1).view(),
        &mut m.init_state(),
        Path::Chunkwise(0),
    );
}

#[test]
fn constructors_name_the_wrong_argument() {
    let z = |r: usize, c: usize| Array2::<f32>::zeros((r, c));
    let v = |n: usize| Array1::<f32>::zeros(n);
    // LSTM: H = 3, 4H = 12 rows.
    input_error_names(
        Lstm::from_torch(z(12, 5), z(9, 3), v(12), v(12)).unwrap_err(),
        "weight_hh",
    );
    input_error_names(
        Lstm::from_torch(z(12, 5), z(12, 4), v(12), v(12)).unwrap_err(),
        "weight_hh",
    );
    input_error_names(
        Lstm::from_torch(z(9, 5), z(12, 3), v(12), v(12)).unwrap_err(),
        "weight_ih",
    );
    input_error_names(
        Lstm::from_torch(z(12, 5), z(12, 3), v(9), v(12)).unwrap_err(),
        "bias_ih",
    );
    input_error_names(
        Lstm::from_torch(z(12, 5), z(12, 3), v(12), v(11)).unwrap_err(),
        "bias_hh",
    );
    assert!(Lstm::from_torch(z(12, 5), z(12, 3), v(12), v(12)).is_ok());
    // GRU weights (3H rows) are not an LSTM's and the other way round.
    input_error_names(
        Lstm::from_torch(z(9, 5), z(9, 3), v(9), v(9)).unwrap_err(),
        "weight_hh",
    );
    input_error_names(
        Gru::from_torch(z(12, 5), z(12, 3), v(12), v(12)).unwrap_err(),
        "weight_hh",
    );
    input_error_names(
        Gru::from_torch(z(9, 5), z(9, 3), v(9), v(8)).unwrap_err(),
        "bias_hh",
    );
    assert!(Gru::from_torch(z(9, 5), z(9, 3), v(9), v(9)).is_ok());
    // Min layers.
    input_error_names(MinGru::new(&[z(4, 5), z(4, 6)]).unwrap_err(), "W_h");
    input_error_names(MinGru::new(&[z(4, 5)]).unwrap_err(), "projections");
    input_error_names(
        MinLstm::new(&[z(4, 5), z(3, 5), z(4, 5)]).unwrap_err(),
        "W_i",
    );
    input_error_names(
        MinLstm::new(&[z(4, 5), z(4, 5)]).unwrap_err(),
        "projections",
    );
    assert!(MinLstm::new(&[z(4, 5), z(4, 5), z(4, 5)]).is_ok());
}
