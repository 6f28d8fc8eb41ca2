//! Logits and final states against the official `rwkv` package (0.8.32, `cpu fp32`), on the
//! committed fixtures made by `tools/oracle/make_fixtures.sh`.

mod common;

use common::*;
use tokenshift::{Logits, Model};

/// Logits tolerance against the official f32 outputs.
const LOGITS_TOL: f32 = 1e-4;
/// State tolerance (states accumulate over all tokens; the official package's own sequence and
/// token-by-token states differ by up to ~1e-5).
const STATE_TOL: f32 = 2e-4;

fn check(dir: &std::path::Path, mode: &str) {
    let name = dir.file_name().unwrap().to_string_lossy();
    let model = load_model(dir);
    let expected = Expected::load(dir);
    // The official loader records versions as numbers: 4, 5 (= 5.0), 5.1, 5.2, 6.
    let number = |s: &str| s.parse::<f64>().unwrap();
    assert_eq!(
        number(&model.config().version.to_string()),
        number(&expected.metadata["version"]),
        "{name}: detected version"
    );
    let mut state = model.init_state();
    let logits = match mode {
        "seq" => model
            .forward(&expected.tokens, &mut state, Logits::All)
            .unwrap(),
        _ => {
            let rows: Vec<_> = expected
                .tokens
                .iter()
                .map(|&t| model.step(t, &mut state).unwrap())
                .collect();
            let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
            ndarray::stack(ndarray::Axis(0), &views).unwrap()
        }
    };
    let d_logits = max_abs_diff(
        logits.view(),
        expected.matrix(&format!("logits_{mode}")).view(),
    );
    let d_state = max_abs_diff_list(&state.to_official_list(), &expected.state(mode));
    println!("{name:8} {mode:4}: max |Δlogits| = {d_logits:.3e}, max |Δstate| = {d_state:.3e}");
    assert!(
        d_logits <= LOGITS_TOL,
        "{name} {mode}: logits differ by {d_logits}"
    );
    assert!(
        d_state <= STATE_TOL,
        "{name} {mode}: state differs by {d_state}"
    );
}

#[test]
fn sequence_mode_matches_official() {
    for dir in fixtures() {
        check(&dir, "seq");
    }
}

#[test]
fn step_mode_matches_official() {
    for dir in fixtures() {
        check(&dir, "step");
    }
}

#[test]
fn detects_version_and_sizes() {
    for dir in fixtures() {
        let model = load_model(&dir);
        let e = Expected::load(&dir);
        let c = model.config();
        let meta = |k: &str| e.metadata[k].parse::<usize>().unwrap();
        assert_eq!(c.n_layer, meta("n_layer"));
        assert_eq!(c.n_embd, meta("n_embd"));
        assert_eq!(c.vocab, meta("vocab"));
        if c.version.has_matrix_state() {
            assert_eq!(c.n_head, meta("n_head"));
            assert_eq!(c.head_size, meta("head_size"));
        }
    }
}

#[test]
fn model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
}
